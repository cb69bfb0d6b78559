//! Median/min/max of a sample set.

use serde::Serialize;

/// Summary statistics of integer samples.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Summary {
    pub median: u64,
    pub min: u64,
    pub max: u64,
}

impl Summary {
    /// Summarises `v` (must be non-empty). The median of an even count is the mean of the
    /// two middle values.
    pub fn of(v: &[u64]) -> Summary {
        assert!(!v.is_empty(), "no samples");
        let mut s = v.to_vec();
        s.sort_unstable();
        let n = s.len();
        let median = if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2
        };
        Summary {
            median,
            min: s[0],
            max: s[n - 1],
        }
    }

    /// "median | min | max" for a Markdown table.
    pub fn row(&self) -> String {
        format!("{} | {} | {}", self.median, self.min, self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_and_even() {
        assert_eq!(
            Summary::of(&[5, 1, 3]),
            Summary {
                median: 3,
                min: 1,
                max: 5
            }
        );
        assert_eq!(
            Summary::of(&[4, 1, 3, 10]),
            Summary {
                median: 3,
                min: 1,
                max: 10
            }
        );
        assert_eq!(
            Summary::of(&[7]),
            Summary {
                median: 7,
                min: 7,
                max: 7
            }
        );
    }
}
