//! Load, attach, pin, detach.
//!
//! A foreground load keeps the attachments in this process: the links die with it, so SIGINT,
//! SIGTERM or a crash leaves nothing attached. Its maps are pinned while it runs (so `stats` can
//! read them) and unpinned when it stops. `--pin` pins the links too and returns: the programs
//! stay attached until `meshwork ebpf unload` removes the pins.

use std::fs::File;
use std::time::{Duration, Instant, SystemTime};

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, MapData};
use aya::programs::links::FdLink;
use aya::programs::{CgroupAttachMode, CgroupSockAddr, ProgramError, SockOps, Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};
use meshwork_ebpf_common::addr::Addr16;
use meshwork_ebpf_common::breaker::BreakerConfig;
use meshwork_ebpf_common::ratelimit::RateLimit;

use crate::config::ProgramConfig;
use crate::instance::{self, Instance};
use crate::preflight::{self, Target};
use crate::program::Hook;
use crate::{EbpfError, Program, objects};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum XdpModeChoice {
    /// Native (driver) mode, falling back to generic (skb) mode when the driver lacks it.
    #[default]
    Auto,
    Native,
    Skb,
}

#[derive(Clone, Debug)]
pub struct LoadRequest {
    pub program: Program,
    pub target: Target,
    pub config: ProgramConfig,
    pub config_json: serde_json::Value,
    pub name: String,
    pub pin: bool,
    pub xdp_mode: XdpModeChoice,
}

/// A loaded instance. Dropping it without [`Loaded::release`] still detaches everything that
/// is not pinned (aya detaches links on drop), but leaves the map pins and the record behind.
pub struct Loaded {
    ebpf: Option<Ebpf>,
    /// Foreground links: closing the last fd of a bpf_link detaches it.
    links: Vec<FdLink>,
    pub instance: Instance,
    /// Stale instances this load cleaned up before it started (their loaders were gone).
    pub swept: Vec<String>,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded").field("instance", &self.instance).finish()
    }
}

impl Loaded {
    /// Detaches (foreground) and removes the map pins and the record.
    pub fn release(mut self) -> Result<(), EbpfError> {
        self.links.clear();
        drop(self.ebpf.take());
        instance::remove_pins(&self.instance.name)?;
        Instance::remove_record(&self.instance.name);
        Ok(())
    }
}

pub fn load(req: LoadRequest) -> Result<Loaded, EbpfError> {
    let program = req.program;
    instance::check_name(&req.name)?;
    preflight::check_capabilities("meshwork ebpf load")?;
    req.target.check()?;
    preflight::check_program_types(program)?;
    preflight::ensure_bpffs()?;
    let object = objects::find(program)?;
    let swept = instance::sweep_stale();

    // The record goes first, naming this process: until the load is done, this process holds
    // the name, and nothing it pins can be mistaken for a dead loader's leftovers.
    let me = std::process::id();
    let mut record = Instance {
        name: req.name.clone(),
        program,
        target: req.target.clone(),
        mode: "loading".into(),
        pid: Some(me),
        pid_start: instance::process_start(me),
        pinned: false,
        program_ids: Vec::new(),
        config: req.config_json.clone(),
        loaded_at_unix: SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
    };
    claim_name(&record)?;
    match load_claimed(&req, &object, &mut record) {
        Ok((ebpf, links)) => Ok(Loaded { ebpf: Some(ebpf), links, instance: record, swept }),
        Err(e) => {
            // Whatever was attached is detached as the handles drop; pins and record go too.
            let _ = instance::remove_pins(&req.name);
            Instance::remove_record(&req.name);
            Err(e)
        }
    }
}

fn load_claimed(
    req: &LoadRequest,
    object: &std::path::Path,
    record: &mut Instance,
) -> Result<(Ebpf, Vec<FdLink>), EbpfError> {
    let mut loader = EbpfLoader::new();
    match &req.config {
        ProgramConfig::RateLimit(c) => loader.map_max_entries("RL_SOURCES", c.max_sources),
        ProgramConfig::Rtt(c) => loader.map_max_entries("RTT_DESTS", c.max_destinations),
        ProgramConfig::Breaker(c) => loader.map_max_entries("CB_DESTS", c.max_destinations),
        ProgramConfig::None => &mut loader,
    };
    let mut ebpf = loader.load_file(object).map_err(EbpfError::aya(format!("loading {}", object.display())))?;
    write_config(&mut ebpf, &req.config)?;
    let (mode, program_ids, links) = attach_all(&mut ebpf, req)?;
    let maps_dir = instance::maps_dir(&req.name);
    std::fs::create_dir_all(&maps_dir).map_err(EbpfError::io(format!("creating {}", maps_dir.display())))?;
    for name in req.program.maps() {
        let map =
            ebpf.map(name).ok_or_else(|| EbpfError::BadInput(format!("{} has no map {name}", object.display())))?;
        map.pin(maps_dir.join(name))
            .map_err(EbpfError::aya(format!("pinning map {name} in {}", maps_dir.display())))?;
    }
    record.mode = mode;
    record.program_ids = program_ids;
    if req.pin {
        // The pinned links hold the attachment from now on, not this process.
        record.pid = None;
        record.pid_start = None;
        record.pinned = true;
    }
    record.save()?;
    Ok((ebpf, links))
}

/// Takes the name for `record`: refuses a name that is in use, clears what a dead loader left
/// behind under it, and writes the record (exclusively: of two loaders racing for one name, one
/// wins).
fn claim_name(record: &Instance) -> Result<(), EbpfError> {
    let name = &record.name;
    if let Some(existing) = Instance::read(name)? {
        if existing.is_live() {
            let how = match existing.pid {
                Some(pid) => format!("held by pid {pid}"),
                None => "pinned".into(),
            };
            return Err(EbpfError::AlreadyLoaded { name: name.clone(), how });
        }
        instance::remove_pins(name)?;
        Instance::remove_record(name);
    } else if instance::links_dir(name).exists() {
        return Err(EbpfError::AlreadyLoaded { name: name.clone(), how: "pinned, without a record".into() });
    } else {
        instance::remove_pins(name)?;
    }
    if !record.create()? {
        return Err(EbpfError::AlreadyLoaded { name: name.clone(), how: "another loader claimed it just now".into() });
    }
    Ok(())
}

/// A map the object must have; an object without it is from an older build.
fn map<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::maps::Map, EbpfError> {
    ebpf.map_mut(name).ok_or_else(|| {
        EbpfError::BadInput(format!("the BPF object has no map {name}: it is out of date; rebuild it with `make ebpf`"))
    })
}

fn write_config(ebpf: &mut Ebpf, config: &ProgramConfig) -> Result<(), EbpfError> {
    let map_err = |name: &str| EbpfError::aya(format!("writing the config map {name}"));
    match config {
        ProgramConfig::RateLimit(c) => {
            let mut default: Array<&mut MapData, RateLimit> =
                Array::try_from(map(ebpf, "RL_CONFIG")?).map_err(map_err("RL_CONFIG"))?;
            default.set(0, c.default, 0).map_err(map_err("RL_CONFIG"))?;
            let mut overrides: LpmTrie<&mut MapData, Addr16, RateLimit> =
                LpmTrie::try_from(map(ebpf, "RL_OVERRIDES")?).map_err(map_err("RL_OVERRIDES"))?;
            for o in &c.overrides {
                overrides.insert(&Key::new(o.prefix_len, o.addr), o.limit, 0).map_err(map_err("RL_OVERRIDES"))?;
            }
            // The program skips the trie when this says there is nothing in it.
            let mut count: Array<&mut MapData, u32> =
                Array::try_from(map(ebpf, "RL_OVERRIDE_COUNT")?).map_err(map_err("RL_OVERRIDE_COUNT"))?;
            count.set(0, c.overrides.len() as u32, 0).map_err(map_err("RL_OVERRIDE_COUNT"))?;
        }
        ProgramConfig::Breaker(c) => {
            let mut map: Array<&mut MapData, BreakerConfig> =
                Array::try_from(map(ebpf, "CB_CONFIG")?).map_err(map_err("CB_CONFIG"))?;
            map.set(0, c.config, 0).map_err(map_err("CB_CONFIG"))?;
        }
        ProgramConfig::Rtt(_) | ProgramConfig::None => {}
    }
    Ok(())
}

/// Loads and attaches every hook; returns the attach mode, the kernel program ids and the links
/// a foreground load keeps.
fn attach_all(ebpf: &mut Ebpf, req: &LoadRequest) -> Result<(String, Vec<u32>, Vec<FdLink>), EbpfError> {
    let links_dir = instance::links_dir(&req.name);
    if req.pin {
        std::fs::create_dir_all(&links_dir).map_err(EbpfError::io(format!("creating {}", links_dir.display())))?;
    }
    let mut mode = String::from("cgroup");
    let mut ids = Vec::new();
    let mut kept = Vec::new();
    for (fn_name, hook) in req.program.hooks() {
        let prog = ebpf.program_mut(fn_name).ok_or_else(|| EbpfError::BadInput(format!("no program {fn_name}")))?;
        let verifier = |e: ProgramError| verifier_error(fn_name, *hook, e);
        let link: FdLink = match (hook, &req.target) {
            (Hook::Xdp, Target::Interface(iface)) => {
                let xdp: &mut Xdp = prog.try_into().map_err(EbpfError::aya(format!("{fn_name} is not XDP")))?;
                xdp.load().map_err(verifier)?;
                ids.push(xdp.info().map(|i| i.id()).unwrap_or(0));
                let (id, m) = attach_xdp(xdp, iface, req.xdp_mode)?;
                mode = m.into();
                let link = xdp.take_link(id).map_err(EbpfError::aya("taking the XDP link"))?;
                FdLink::try_from(link).map_err(EbpfError::aya("the XDP attachment is not a bpf_link"))?
            }
            (Hook::SockOps, Target::Cgroup(path)) => {
                let so: &mut SockOps = prog.try_into().map_err(EbpfError::aya(format!("{fn_name} is not sock_ops")))?;
                so.load().map_err(verifier)?;
                ids.push(so.info().map(|i| i.id()).unwrap_or(0));
                let cgroup = open_cgroup(path)?;
                let id = so
                    .attach(&cgroup, CGROUP_LINK_MODE)
                    .map_err(EbpfError::aya(format!("attaching {fn_name} to {}", path.display())))?;
                let link = so.take_link(id).map_err(EbpfError::aya("taking the sock_ops link"))?;
                FdLink::try_from(link).map_err(EbpfError::aya("the sock_ops attachment is not a bpf_link"))?
            }
            (Hook::Connect4 | Hook::Connect6, Target::Cgroup(path)) => {
                let sa: &mut CgroupSockAddr =
                    prog.try_into().map_err(EbpfError::aya(format!("{fn_name} is not a cgroup sock_addr program")))?;
                sa.load().map_err(verifier)?;
                ids.push(sa.info().map(|i| i.id()).unwrap_or(0));
                let cgroup = open_cgroup(path)?;
                let id = sa
                    .attach(&cgroup, CGROUP_LINK_MODE)
                    .map_err(EbpfError::aya(format!("attaching {fn_name} to {}", path.display())))?;
                let link = sa.take_link(id).map_err(EbpfError::aya("taking the connect link"))?;
                FdLink::try_from(link).map_err(EbpfError::aya("the connect attachment is not a bpf_link"))?
            }
            (_, target) => return Err(EbpfError::BadInput(format!("{} cannot attach to {target}", req.program))),
        };
        if req.pin {
            let path = links_dir.join(fn_name);
            link.pin(&path).map_err(EbpfError::aya(format!("pinning {}", path.display())))?;
        } else {
            kept.push(link);
        }
    }
    Ok((mode, ids, kept))
}

/// bpf_link_create refuses attach flags on cgroups (EINVAL) because a cgroup bpf_link always
/// attaches as one of many: "Single" is aya's way of passing no flags, not exclusivity.
const CGROUP_LINK_MODE: CgroupAttachMode = CgroupAttachMode::Single;

fn open_cgroup(path: &std::path::Path) -> Result<File, EbpfError> {
    File::open(path).map_err(EbpfError::io(format!("opening cgroup {}", path.display())))
}

fn attach_xdp(
    xdp: &mut Xdp,
    iface: &str,
    choice: XdpModeChoice,
) -> Result<(aya::programs::xdp::XdpLinkId, &'static str), EbpfError> {
    let attempts: &[(XdpMode, &'static str)] = match choice {
        XdpModeChoice::Auto => &[(XdpMode::Driver, "native"), (XdpMode::Skb, "skb")],
        XdpModeChoice::Native => &[(XdpMode::Driver, "native")],
        XdpModeChoice::Skb => &[(XdpMode::Skb, "skb")],
    };
    let mut last = None;
    for (mode, label) in attempts {
        match xdp.attach(iface, *mode) {
            Ok(id) => return Ok((id, label)),
            Err(ProgramError::UnknownInterface { name }) => return Err(EbpfError::NoInterface(name)),
            Err(e) => {
                if let Some(busy) = busy(&e) {
                    return Err(EbpfError::BadInput(format!("{iface} already has an XDP program attached ({busy})")));
                }
                last = Some((label, e));
            }
        }
    }
    let (label, e) = last.expect("at least one attempt");
    if os_error(&e) == Some(libc::EOPNOTSUPP) && choice == XdpModeChoice::Native {
        return Err(EbpfError::BadInput(format!(
            "{iface}'s driver cannot run XDP in native mode; use --xdp-mode auto (falls back to skb mode) or skb"
        )));
    }
    Err(EbpfError::Aya { context: format!("attaching XDP to {iface} in {label} mode"), source: Box::new(e) })
}

/// The errno at the bottom of an aya error, if any.
fn os_error(e: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && let Some(code) = io.raw_os_error()
        {
            return Some(code);
        }
        cur = err.source();
    }
    None
}

fn busy(e: &ProgramError) -> Option<String> {
    let text = format!("{e:?}");
    (text.contains("EBUSY") || text.contains("EEXIST") || text.contains("File exists") || text.contains("busy"))
        .then_some(text)
        .map(|_| "unload it first".to_owned())
}

fn verifier_error(fn_name: &str, hook: Hook, e: ProgramError) -> EbpfError {
    match e {
        ProgramError::LoadError { io_error, verifier_log } => {
            if io_error.raw_os_error() == Some(libc::EINVAL) && verifier_log.to_string().trim().is_empty() {
                // An empty log and EINVAL: the kernel did not even parse the program type.
                return EbpfError::KernelLacks { program: "this program", program_type: hook.program_type() };
            }
            if io_error.raw_os_error() == Some(libc::EPERM) {
                return EbpfError::NotPermitted {
                    action: "loading BPF programs",
                    needed: "CAP_BPF and CAP_NET_ADMIN",
                    missing: format!("the permission the kernel asked for ({io_error})"),
                };
            }
            let log = verifier_log.to_string();
            let tail: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).rev().take(6).collect();
            EbpfError::Verifier {
                program: fn_name.to_owned(),
                error: io_error,
                log: tail.into_iter().rev().collect::<Vec<_>>().join(" | "),
            }
        }
        other => EbpfError::Aya { context: format!("loading {fn_name}"), source: Box::new(other) },
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct UnloadReport {
    pub name: String,
    /// The foreground loader that was asked to stop.
    pub stopped_pid: Option<u32>,
    pub unpinned: bool,
}

/// Detaches an instance: stops its foreground loader (SIGTERM, which detaches and cleans up) or
/// removes its pins, and forgets it.
pub fn unload(name: &str) -> Result<UnloadReport, EbpfError> {
    instance::check_name(name)?;
    preflight::check_capabilities("meshwork ebpf unload")?;
    let record = Instance::read(name)?;
    let pins_exist = instance::pin_dir(name).exists();
    if record.is_none() && !pins_exist {
        return Err(EbpfError::NoInstance(name.to_owned()));
    }
    let mut stopped_pid = None;
    // Only a live loader is signalled: the pid with the start time recorded, so a pid the kernel
    // has since given to another process is left alone.
    let live_pid = record.as_ref().filter(|r| r.is_live()).and_then(|r| r.pid);
    if let Some(pid) = live_pid
        && pid != std::process::id()
    {
        // SAFETY: plain kill(2).
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        let start = instance::process_start(pid);
        while start.is_some() && instance::process_start(pid) == start {
            if Instant::now() > deadline {
                return Err(EbpfError::BadInput(format!(
                    "pid {pid} holding {name} did not stop within 10s of SIGTERM"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        stopped_pid = Some(pid);
    }
    let unpinned = instance::pin_dir(name).exists();
    instance::remove_pins(name)?;
    Instance::remove_record(name);
    Ok(UnloadReport { name: name.to_owned(), stopped_pid, unpinned })
}

/// Blocks until SIGINT, SIGTERM or SIGHUP. Call [`block_signals`] first, before any thread
/// starts, so the signal is waited for here instead of killing the process.
pub fn wait_for_signal() -> i32 {
    let set = signal_set();
    let mut sig = 0;
    // SAFETY: a valid set and out-pointer.
    unsafe { libc::sigwait(&set, &mut sig) };
    sig
}

pub fn block_signals() {
    let set = signal_set();
    // SAFETY: a valid set.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        set
    }
}
