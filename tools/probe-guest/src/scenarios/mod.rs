//! Scenarios selected with `probe=NAME`. To add one: write `fn run(&Ctx) -> Outcome` in a
//! module here and list it in [`ALL`]. A scenario prints its own `PROBE-...` detail lines;
//! main prints the single `PROBE-RESULT` line from the outcome.

use crate::bootparams::BootParams;
use crate::cmdline::Cmdline;

mod basic;
mod blk;
mod blkbench;
mod cpuid;
mod fs;
mod mem;
mod smp;
mod vsock;

/// What a scenario gets.
pub struct Ctx<'a> {
    pub boot: BootParams,
    pub cmdline: Cmdline<'a>,
}

/// `Err(reason)` becomes `PROBE-RESULT: FAIL name: reason`.
pub type Outcome = Result<(), &'static str>;

/// A named scenario.
pub struct Scenario {
    pub name: &'static str,
    pub run: fn(&Ctx) -> Outcome,
}

/// Every scenario.
pub const ALL: &[Scenario] = &[
    Scenario {
        name: "hello",
        run: basic::hello,
    },
    Scenario {
        name: "cmdline",
        run: basic::cmdline,
    },
    Scenario {
        name: "mem",
        run: mem::run,
    },
    Scenario {
        name: "cpuid",
        run: cpuid::run,
    },
    Scenario {
        name: "smp",
        run: smp::run,
    },
    Scenario {
        name: "fault",
        run: basic::fault,
    },
    Scenario {
        name: "echo",
        run: basic::echo,
    },
    Scenario {
        name: "spin",
        run: basic::spin,
    },
    Scenario {
        name: "blk",
        run: blk::run,
    },
    Scenario {
        name: "vsock",
        run: vsock::run,
    },
    Scenario {
        name: "fs",
        run: fs::run,
    },
    Scenario {
        name: "blkbench",
        run: blkbench::run,
    },
    Scenario {
        name: "vsockbench",
        run: vsock::bench,
    },
];

/// Look a scenario up by name.
pub fn find(name: &[u8]) -> Option<&'static Scenario> {
    ALL.iter().find(|s| s.name.as_bytes() == name)
}
