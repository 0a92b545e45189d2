//! The media helper's sandbox: what a helper process gives up before it reads its first request.
//!
//! A helper parses hostile media with C libraries, so a bug in a demuxer must not become a way to
//! read the home's secrets, reach the network or fill the disk. In order, at start-up, while the
//! helper is still single-threaded (namespaces and Landlock need that):
//!
//! 1. Resource limits: address space ([`Limits::memory_bytes`]), the size of any file it writes
//!    ([`Limits::file_bytes`]), no core dumps. CPU time is not an rlimit (RLIMIT_CPU adds up over
//!    the helper's whole life, across jobs): the worker's timer kills a helper that overruns.
//! 2. `no_new_privs`, which Landlock and seccomp need and which stops a set-uid escalation.
//! 3. The network: a network namespace of its own (only `lo`, and down) where the kernel allows it
//!    (as root, or through an unprivileged user namespace), and in every case a seccomp filter
//!    that refuses `socket()` and io_uring with `EACCES`. The namespace is defence in depth; the
//!    filter is what makes a socket fail, inside a namespace or not.
//! 4. Files: Landlock, where the kernel has it (probed with `landlock_create_ruleset`, through the
//!    landlock crate), allows reading and writing beneath the scratch root, reading beneath the
//!    read roots the worker names (an `fs://` object store, whose stored originals re-extraction
//!    and `reprobe` read in place), and nothing else. The helper's libraries are loaded before,
//!    and its stdin and stdout are already open.
//!
//! Each protection can be switched off by [`DISABLE_ENV`] (a comma-separated list of `netns`,
//! `seccomp`, `landlock`, `rlimits`) so that tests force each fallback and an operator on a
//! kernel that misbehaves can still run; [`Protections`] says what is active, and `doctor` shows it.
//!
//! This module never decides a job's outcome; it only restricts the process that calls it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The setting that switches protections off (tests and troubleshooting only).
pub const DISABLE_ENV: &str = "NARRA_MEDIA_SANDBOX_DISABLE";

/// The resource limits of a helper.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// RLIMIT_AS: the helper's whole address space, libraries and thread stacks included.
    pub memory_bytes: u64,
    /// RLIMIT_FSIZE: the largest file it may write (the extracted audio).
    pub file_bytes: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            memory_bytes: 2 << 30,
            file_bytes: 64 << 30,
        }
    }
}

/// Which protections are active in a helper: its answer to a self-check, shown by `doctor`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Protections {
    pub rlimits: bool,
    pub no_new_privs: bool,
    /// A network namespace of its own.
    pub network_namespace: bool,
    /// The seccomp filter that refuses `socket()`.
    pub seccomp_socket: bool,
    /// `fully`, `partially` (an older Landlock ABI), or why not (`unsupported by the kernel`,
    /// `disabled`, an error).
    pub landlock: String,
}

impl Protections {
    /// One line for `doctor`.
    pub fn summary(&self) -> String {
        let on_off = |on: bool| if on { "on" } else { "off" };
        format!(
            "rlimits {}, no_new_privs {}, network namespace {}, socket() refused by seccomp {}, \
             landlock {}",
            on_off(self.rlimits),
            on_off(self.no_new_privs),
            on_off(self.network_namespace),
            on_off(self.seccomp_socket),
            self.landlock
        )
    }
}

/// What [`DISABLE_ENV`] switches off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Disabled {
    pub netns: bool,
    pub seccomp: bool,
    pub landlock: bool,
    pub rlimits: bool,
}

impl Disabled {
    /// Parses the setting's value; an unknown name is an error, so a typo never leaves a
    /// protection on that a test believes off, or the reverse.
    pub fn parse(value: &str) -> Result<Disabled, String> {
        let mut disabled = Disabled::default();
        for name in value
            .split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
        {
            match name {
                "netns" => disabled.netns = true,
                "seccomp" => disabled.seccomp = true,
                "landlock" => disabled.landlock = true,
                "rlimits" => disabled.rlimits = true,
                other => {
                    return Err(format!(
                        "{DISABLE_ENV}: unknown protection {other:?} (netns, seccomp, landlock, \
                         rlimits)"
                    ));
                }
            }
        }
        Ok(disabled)
    }
}

/// Restricts the calling process for good. Call it while the process has one thread. A
/// protection the kernel refuses is reported off, never a reason to stop: `doctor` names it.
pub fn enter(
    scratch_root: &Path,
    read_roots: &[PathBuf],
    limits: Limits,
    disabled: Disabled,
) -> Protections {
    let mut protections = Protections {
        rlimits: !disabled.rlimits && set_rlimits(limits).is_ok(),
        ..Protections::default()
    };
    // SAFETY: prctl with integer arguments only.
    protections.no_new_privs = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } == 0;
    protections.network_namespace = !disabled.netns && own_network_namespace();
    protections.seccomp_socket = !disabled.seccomp && refuse_sockets().is_ok();
    protections.landlock = if disabled.landlock {
        "disabled".to_string()
    } else {
        confine_files(scratch_root, read_roots)
    };
    protections
}

fn set_rlimits(limits: Limits) -> std::io::Result<()> {
    let set = |resource, bytes: u64| {
        let limit = libc::rlimit {
            rlim_cur: bytes,
            rlim_max: bytes,
        };
        // SAFETY: setrlimit reads the struct it is given and nothing else.
        if unsafe { libc::setrlimit(resource, &limit) } == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    set(libc::RLIMIT_AS, limits.memory_bytes)?;
    set(libc::RLIMIT_FSIZE, limits.file_bytes)?;
    set(libc::RLIMIT_CORE, 0)
}

/// A network namespace of its own, inside a new user namespace where the kernel allows one (for
/// any user), else directly (root only).
fn own_network_namespace() -> bool {
    // SAFETY: unshare with flags only; the process is single-threaded, as CLONE_NEWUSER requires.
    // A user namespace first, also for root: entering one drops every capability the process had
    // in the machine's namespace (a root helper could otherwise make device nodes or load modules).
    unsafe {
        libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET) == 0
            || libc::unshare(libc::CLONE_NEWNET) == 0
    }
}

/// A seccomp filter that makes `socket()` and io_uring (which can create sockets without calling
/// `socket()`) fail with `EACCES`, and allows everything else. The helper needs no socket of any
/// family and no io_uring: its requests come on stdin.
fn refuse_sockets() -> Result<(), String> {
    use seccompiler::{BpfProgram, SeccompAction, SeccompFilter};
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|error| format!("{error:?}"))?;
    let filter = SeccompFilter::new(
        [
            libc::SYS_socket,
            libc::SYS_io_uring_setup,
            libc::SYS_io_uring_enter,
            libc::SYS_io_uring_register,
        ]
        .into_iter()
        .map(|call| (call, vec![]))
        .collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EACCES as u32),
        arch,
    )
    .map_err(|error| error.to_string())?;
    let program: BpfProgram = filter.try_into().map_err(|error| format!("{error:?}"))?;
    seccompiler::apply_filter(&program).map_err(|error| error.to_string())
}

/// Landlock: read and write beneath `scratch_root`, read beneath `read_roots`, nothing else.
/// Returns the status as `doctor` shows it.
fn confine_files(scratch_root: &Path, read_roots: &[PathBuf]) -> String {
    use landlock::{
        ABI, Access, AccessFs, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus,
        path_beneath_rules,
    };
    let abi = ABI::V3;
    let restricted = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .and_then(|ruleset| ruleset.create())
        .and_then(|ruleset| {
            // Files and directories only: no device nodes, FIFOs, sockets or symlinks made.
            let scratch_access = AccessFs::ReadFile
                | AccessFs::WriteFile
                | AccessFs::ReadDir
                | AccessFs::MakeReg
                | AccessFs::MakeDir
                | AccessFs::RemoveFile
                | AccessFs::RemoveDir
                | AccessFs::Truncate
                | AccessFs::Refer;
            ruleset.add_rules(path_beneath_rules([scratch_root], scratch_access))
        })
        .and_then(|ruleset| {
            ruleset.add_rules(path_beneath_rules(read_roots, AccessFs::from_read(abi)))
        })
        .and_then(|ruleset| ruleset.restrict_self());
    match restricted {
        Ok(status) => match status.ruleset {
            RulesetStatus::FullyEnforced => "fully".to_string(),
            RulesetStatus::PartiallyEnforced => "partially".to_string(),
            RulesetStatus::NotEnforced => "unsupported by the kernel".to_string(),
        },
        Err(error) => format!("failed: {error}"),
    }
}

/// What the sandbox lets the helper do, tried from inside it: the answer to a self-check request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SelfCheck {
    pub protections: Protections,
    /// Opening `/etc/passwd` for reading: `Ok` means it was readable.
    pub read_etc_passwd: Result<(), String>,
    /// `socket(AF_INET, SOCK_STREAM)`: `Ok` means a socket was created.
    pub open_socket: Result<(), String>,
}

/// Tries what the sandbox must refuse.
pub fn self_check(protections: &Protections) -> SelfCheck {
    let read_etc_passwd = std::fs::File::open("/etc/passwd")
        .map(drop)
        .map_err(|error| error.to_string());
    // SAFETY: socket with integer arguments; a returned descriptor is closed at once.
    let open_socket = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        if fd >= 0 {
            libc::close(fd);
            Ok(())
        } else {
            Err(std::io::Error::last_os_error().to_string())
        }
    };
    SelfCheck {
        protections: protections.clone(),
        read_etc_passwd,
        open_socket,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_disable_setting_names_known_protections_only() {
        assert_eq!(Disabled::parse("").unwrap(), Disabled::default());
        let both = Disabled::parse(" netns , landlock").unwrap();
        assert!(both.netns && both.landlock && !both.seccomp && !both.rlimits);
        let error = Disabled::parse("netns,landlok").unwrap_err();
        assert!(error.contains("\"landlok\""), "{error}");
    }
}
