//! Host cgroup layout discovery (v1, v2 or hybrid), from /proc/self/mountinfo.

use std::path::PathBuf;

/// One mounted cgroup hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// Mount point.
    pub mount: PathBuf,
    /// v1 controllers bound to it (empty for cgroup2).
    pub controllers: Vec<String>,
    /// True for cgroup2.
    pub unified: bool,
}

/// All cgroup hierarchies mounted on the host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layout {
    /// The hierarchies in mount order.
    pub hierarchies: Vec<Hierarchy>,
}

/// Controllers the sandbox cgroups use.
pub const NEEDED_CONTROLLERS: &[&str] = &["cpu", "cpuset", "memory", "pids"];

impl Layout {
    /// Reads the current process's mount table.
    pub fn detect() -> std::io::Result<Layout> {
        Ok(Self::parse(&std::fs::read_to_string(
            "/proc/self/mountinfo",
        )?))
    }

    /// Parses mountinfo text (see proc(5)).
    pub fn parse(mountinfo: &str) -> Layout {
        let mut hierarchies = Vec::new();
        for line in mountinfo.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let mount = match left.split(' ').nth(4) {
                Some(m) => PathBuf::from(m.replace("\\040", " ")),
                None => continue,
            };
            let mut r = right.split(' ');
            let fstype = r.next().unwrap_or("");
            let _source = r.next();
            let options = r.next().unwrap_or("");
            match fstype {
                "cgroup2" => hierarchies.push(Hierarchy {
                    mount,
                    controllers: Vec::new(),
                    unified: true,
                }),
                "cgroup" => {
                    let controllers = options
                        .split(',')
                        .filter(|o| {
                            !matches!(
                                *o,
                                "rw" | "ro"
                                    | "nosuid"
                                    | "nodev"
                                    | "noexec"
                                    | "relatime"
                                    | "xattr"
                                    | "noprefix"
                                    | "clone_children"
                                    | "cpuset_v2_mode"
                            ) && !o.contains('=')
                        })
                        .map(String::from)
                        .collect();
                    hierarchies.push(Hierarchy {
                        mount,
                        controllers,
                        unified: false,
                    })
                }
                _ => {}
            }
        }
        Layout { hierarchies }
    }

    /// The v1 hierarchy holding `controller`, if any.
    pub fn v1_mount(&self, controller: &str) -> Option<&Hierarchy> {
        self.hierarchies
            .iter()
            .find(|h| !h.unified && h.controllers.iter().any(|c| c == controller))
    }

    /// The cgroup2 mount, if any.
    pub fn unified(&self) -> Option<&Hierarchy> {
        self.hierarchies.iter().find(|h| h.unified)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 31 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
30 25 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
35 30 0:31 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,cpu,cpuacct
36 30 0:32 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,memory
37 30 0:33 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
";

    #[test]
    fn hybrid_layout() {
        let l = Layout::parse(HYBRID);
        assert_eq!(l.hierarchies.len(), 4);
        assert_eq!(
            l.unified().unwrap().mount,
            PathBuf::from("/sys/fs/cgroup/unified")
        );
        let cpu = l.v1_mount("cpu").unwrap();
        assert_eq!(cpu.mount, PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(cpu.controllers, vec!["cpu", "cpuacct"]);
        assert!(l.v1_mount("pids").is_none());
        let named = l
            .hierarchies
            .iter()
            .find(|h| h.mount.ends_with("systemd"))
            .unwrap();
        assert!(
            named.controllers.is_empty(),
            "named hierarchies bind no controller"
        );
    }

    #[test]
    fn pure_v2() {
        let l = Layout::parse("29 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n");
        assert!(l.unified().is_some());
        assert!(l.v1_mount("memory").is_none());
        assert_eq!(Layout::parse("garbage\n\n"), Layout::default());
    }
}
