//! The programs meshwork ships: which object holds each, which kernel programs it loads and
//! where they attach, and which maps it shares with user space.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Program {
    /// Per-source token buckets at XDP (attach with --iface).
    XdpRatelimit,
    /// Per-destination TCP RTT histograms from sock_ops (attach with --cgroup).
    SockopsRtt,
    /// Connect-time circuit breaking per destination (attach with --cgroup).
    ConnectBreaker,
    /// XDP that passes everything: the benchmark's baseline (attach with --iface).
    XdpPass,
}

/// What a program attaches to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetKind {
    Interface,
    Cgroup,
}

/// A kernel program inside an object, and the hook it attaches to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Xdp,
    SockOps,
    Connect4,
    Connect6,
}

impl Hook {
    /// The kernel's name for the program type, for error messages.
    pub fn program_type(self) -> &'static str {
        match self {
            Hook::Xdp => "BPF_PROG_TYPE_XDP",
            Hook::SockOps => "BPF_PROG_TYPE_SOCK_OPS",
            Hook::Connect4 | Hook::Connect6 => "BPF_PROG_TYPE_CGROUP_SOCK_ADDR",
        }
    }
}

impl Program {
    pub const ALL: [Program; 4] =
        [Program::XdpRatelimit, Program::SockopsRtt, Program::ConnectBreaker, Program::XdpPass];

    pub fn name(self) -> &'static str {
        match self {
            Program::XdpRatelimit => "xdp-ratelimit",
            Program::SockopsRtt => "sockops-rtt",
            Program::ConnectBreaker => "connect-breaker",
            Program::XdpPass => "xdp-pass",
        }
    }

    pub fn from_name(name: &str) -> Option<Program> {
        Program::ALL.into_iter().find(|p| p.name() == name)
    }

    pub fn object_file(self) -> String {
        format!("{}.o", self.name())
    }

    pub fn target_kind(self) -> TargetKind {
        match self {
            Program::XdpRatelimit | Program::XdpPass => TargetKind::Interface,
            Program::SockopsRtt | Program::ConnectBreaker => TargetKind::Cgroup,
        }
    }

    /// The kernel programs in the object (function names), in attach order.
    pub fn hooks(self) -> &'static [(&'static str, Hook)] {
        match self {
            Program::XdpRatelimit => &[("xdp_ratelimit", Hook::Xdp)],
            Program::XdpPass => &[("xdp_pass", Hook::Xdp)],
            Program::SockopsRtt => &[("sockops_rtt", Hook::SockOps)],
            // sock_ops first: outcomes must be observed before the first connect is admitted.
            Program::ConnectBreaker => &[
                ("breaker_sockops", Hook::SockOps),
                ("breaker_connect4", Hook::Connect4),
                ("breaker_connect6", Hook::Connect6),
            ],
        }
    }

    /// Maps pinned for `meshwork ebpf stats` while the program is loaded.
    pub fn maps(self) -> &'static [&'static str] {
        match self {
            Program::XdpRatelimit => &["RL_CONFIG", "RL_OVERRIDES", "RL_SOURCES", "RL_TOTALS"],
            Program::SockopsRtt => &["RTT_DESTS"],
            Program::ConnectBreaker => &["CB_CONFIG", "CB_DESTS"],
            Program::XdpPass => &[],
        }
    }
}

impl std::fmt::Display for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
