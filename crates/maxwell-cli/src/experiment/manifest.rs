//! The roster of an experiment: the default one (leeches and scientists, alternating) or one read
//! from a TOML manifest (`--manifest FILE`, docs/experiment.md), and its mapping to the specs of
//! the chosen backend.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use maxwell_core::{Bytes, Tokens};
use maxwell_sandbox::{AgentSpec, Limits, Program};

/// What a manifest agent is written like; appended to every manifest error.
const HINT: &str = "each agent is written as\n  [[agent]]\n  name = \"scientist-0\"    # letters, digits, '-' or '_'\n  useful = true           # counts toward the oracle arm\n  builtin = \"scientist\"   # or \"leech\", \"squatter\", \"liar\"; or wasm = \"module.wat\"; or native = \"/path/to/program\" with args = [\"...\"]\n  funds = \"10 JOULE\"      # optional: integer micro-JOULE or a string with a unit";

/// Funds when a manifest names none, and of every agent of the default roster.
pub(super) const DEFAULT_FUNDS: Tokens = Tokens(10_000_000);

/// The agents shipped with Maxwell (`agents/`), as WAT and as native programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Builtin {
    /// Sieves primes and claims them: useful work.
    Scientist,
    /// Burns CPU and churns memory; claims nothing.
    Leech,
    /// Holds memory and idles.
    Squatter,
    /// Claims ranges it never computed.
    Liar,
}

impl Builtin {
    /// The name of its native program (`agents/src/bin/<name>.rs`).
    pub(super) fn program(self) -> &'static str {
        match self {
            Builtin::Scientist => "scientist",
            Builtin::Leech => "leech",
            Builtin::Squatter => "squatter",
            Builtin::Liar => "liar",
        }
    }
}

/// Where an agent's code comes from.
#[derive(Debug, Clone)]
pub(super) enum Source {
    /// A builtin agent (a scientist sieves the ranges its host leases to it).
    Builtin {
        /// Which.
        kind: Builtin,
    },
    /// A WASM module (binary or text) read from a file.
    Wasm(PathBuf),
    /// A native program and its arguments.
    Native {
        /// The executable.
        path: PathBuf,
        /// Its arguments.
        args: Vec<String>,
    },
}

/// One agent of the roster, before a backend is chosen.
#[derive(Debug, Clone)]
pub(super) struct Planned {
    /// Unique name (it names cgroups, sockets and CSV columns).
    pub name: String,
    /// Whether it counts toward the oracle arm.
    pub useful: bool,
    /// Its opening balance.
    pub funds: Tokens,
    /// Its code.
    pub source: Source,
    /// Where it is declared (for errors): `file: line N`, or the default roster.
    origin: String,
}

/// One agent of the roster, ready to spawn on the chosen backend.
#[derive(Debug, Clone)]
pub(super) struct Member {
    /// Whether it counts toward the oracle arm.
    pub useful: bool,
    /// Its opening balance.
    pub funds: Tokens,
    /// What to spawn.
    pub spec: AgentSpec,
}

/// The sandbox backend of every arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Backend {
    /// WASM modules under wasmtime (no privilege needed).
    Wasm,
    /// Native programs in cgroups (needs root).
    Process,
    /// Native programs, linked statically, each in its own microVM (needs root, QEMU or
    /// Firecracker; docs/microvm.md).
    Microvm,
}

impl Backend {
    /// `wasm`, `process` or `microvm`.
    pub(super) fn name(self) -> &'static str {
        match self {
            Backend::Wasm => "wasm",
            Backend::Process => "process",
            Backend::Microvm => "microvm",
        }
    }

    fn native(self) -> bool {
        matches!(self, Backend::Process | Backend::Microvm)
    }
}

/// The default roster: leeches first and then alternating. The market breaks ties by age, so
/// this order gives the leeches every advantage a spawn order can.
pub(super) fn default_roster(scientists: u32, leeches: u32) -> Vec<Planned> {
    let mut v = Vec::new();
    for i in 0..scientists.max(leeches) {
        if i < leeches {
            v.push(Planned {
                name: format!("leech-{i}"),
                useful: false,
                funds: DEFAULT_FUNDS,
                source: Source::Builtin {
                    kind: Builtin::Leech,
                },
                origin: "default roster".into(),
            });
        }
        if i < scientists {
            v.push(Planned {
                name: format!("scientist-{i}"),
                useful: true,
                funds: DEFAULT_FUNDS,
                source: Source::Builtin {
                    kind: Builtin::Scientist,
                },
                origin: "default roster".into(),
            });
        }
    }
    v
}

/// Money in a manifest: integer micro-JOULE, or a string with a unit (`"10 JOULE"`).
#[derive(Debug, Clone, Copy)]
struct Funds(Tokens);

impl<'de> Deserialize<'de> for Funds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Funds, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Funds;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("integer micro-JOULE or a string with a unit, like \"10 JOULE\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Funds, E> {
                Ok(Funds(Tokens(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Funds, E> {
                u64::try_from(v).map(|v| Funds(Tokens(v))).map_err(|_| {
                    E::custom("funds cannot be negative; write e.g. funds = \"10 JOULE\"")
                })
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Funds, E> {
                v.parse().map(Funds).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    agent: Vec<Entry>,
}

/// One `[[agent]]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: toml::Spanned<String>,
    useful: Option<bool>,
    builtin: Option<Builtin>,
    wasm: Option<PathBuf>,
    native: Option<PathBuf>,
    args: Option<Vec<String>>,
    funds: Option<Funds>,
}

/// Reads and checks a manifest. Every error names the file, the line where it can tell, and
/// what to write instead. Relative paths are relative to the manifest's directory.
pub(super) fn load(path: &Path) -> anyhow::Result<Vec<Planned>> {
    let text = maxwell_daemon::files::read_text(path, "manifest").map_err(anyhow::Error::msg)?;
    parse(&text, path)
}

/// [`load`] on text already read; `path` names it and anchors relative paths.
fn parse(text: &str, path: &Path) -> anyhow::Result<Vec<Planned>> {
    let shown = path.display();
    let file: File = toml::from_str(text).map_err(|e| {
        anyhow::anyhow!(
            "manifest {shown}: {}\n{HINT}",
            e.to_string()
                .trim_end()
                .replace("TOML parse error", "error")
        )
    })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let resolve = |p: PathBuf| if p.is_relative() { dir.join(p) } else { p };
    if file.agent.is_empty() {
        anyhow::bail!("manifest {shown}: no agents\n{HINT}");
    }
    let mut names = BTreeSet::new();
    let mut out = Vec::new();
    for e in file.agent {
        let line = text[..e.name.span().start.min(text.len())]
            .matches('\n')
            .count()
            + 1;
        let name = e.name.into_inner();
        let origin = format!("{shown}: line {line}");
        let fail =
            |what: String| anyhow::anyhow!("manifest {origin}: agent {name:?}: {what}\n{HINT}");
        if let Err(err) = maxwell_sandbox::check_name(&name) {
            return Err(fail(err.to_string()));
        }
        if !names.insert(name.clone()) {
            return Err(fail(
                "the name is taken by an earlier agent; names must be unique".into(),
            ));
        }
        let source = match (e.builtin, e.wasm, e.native) {
            (Some(kind), None, None) => Source::Builtin { kind },
            (None, Some(w), None) => {
                let w = resolve(w);
                if !w.is_file() {
                    return Err(fail(format!("wasm = {}: no such file", w.display())));
                }
                Source::Wasm(w)
            }
            (None, None, Some(n)) => {
                let n = resolve(n);
                if !n.is_file() {
                    return Err(fail(format!("native = {}: no such file", n.display())));
                }
                Source::Native {
                    path: n,
                    args: e.args.clone().unwrap_or_default(),
                }
            }
            _ => {
                return Err(fail(
                    "give exactly one of builtin = \"scientist\" (or \"leech\", \"squatter\", \
                     \"liar\"), wasm = \"module.wat\" or native = \"/path/to/program\""
                        .into(),
                ));
            }
        };
        if e.args.is_some() && !matches!(source, Source::Native { .. }) {
            return Err(fail("args = [...] goes with native = \"...\" only".into()));
        }
        let useful = match (e.useful, &source) {
            (Some(u), _) => u,
            (None, Source::Builtin { kind, .. }) => *kind == Builtin::Scientist,
            (None, _) => {
                return Err(fail(
                    "say whether it does useful work: useful = true (counts toward the oracle \
                     arm) or useful = false"
                        .into(),
                ));
            }
        };
        out.push(Planned {
            name,
            useful,
            funds: e.funds.map_or(DEFAULT_FUNDS, |f| f.0),
            source,
            origin,
        });
    }
    // Every wallet, the bounty pool and the oracle's wallets must fit the books (all the money
    // there may ever be), checked before any arm starts.
    let total = out
        .iter()
        .try_fold(maxwell_node::defaults::BOUNTY_POOL.0, |t, p| {
            t.checked_add(p.funds.0)
        })
        .filter(|t| *t <= maxwell_core::ledger::MAX_SUPPLY.0);
    if total.is_none() {
        anyhow::bail!(
            "manifest {shown}: the agents' funds and the bounty pool add up to more than the \
             books can hold ({}); fund less\n{HINT}",
            maxwell_core::ledger::MAX_SUPPLY
        );
    }
    if !out.iter().any(|p| p.useful) {
        anyhow::bail!(
            "manifest {shown}: no agent has useful = true; the oracle arm runs only those\n{HINT}"
        );
    }
    Ok(out)
}

/// The native programs of the builtin agents live next to the `maxwell` executable.
fn agents_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()
        .map_err(|e| anyhow::anyhow!("cannot find this program's own path: {e}"))?;
    Ok(exe
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf))
}

/// Turns the roster into specs for `backend`: builtins become WAT (wasm) or the native agent
/// programs next to this executable (process). Refuses, before anything starts, an agent the
/// backend cannot run and builtin programs that are missing.
pub(super) fn members(planned: &[Planned], backend: Backend) -> anyhow::Result<Vec<Member>> {
    let mut out = Vec::new();
    let mut missing = BTreeSet::new();
    let builtins = planned
        .iter()
        .any(|p| matches!(p.source, Source::Builtin { .. }));
    let dir = match backend {
        Backend::Process if builtins => Some(agents_dir()?),
        Backend::Microvm if builtins => {
            Some(maxwell_sandbox::microvm::guest_bin_dir().ok_or_else(|| {
                anyhow::anyhow!(
                    "--backend microvm runs the built-in agents linked statically, and they \
                     are not built: run scripts/build-guest (or set MAXWELL_GUEST_BIN)"
                )
            })?)
        }
        _ => None,
    };
    for p in planned {
        let program = match (backend, &p.source) {
            (Backend::Wasm, Source::Builtin { kind }) => Program::Wasm {
                module: match kind {
                    Builtin::Scientist => maxwell_agents::SCIENTIST_WAT,
                    Builtin::Leech => maxwell_agents::LEECH_WAT,
                    Builtin::Squatter => maxwell_agents::SQUATTER_WAT,
                    Builtin::Liar => maxwell_agents::LIAR_WAT,
                }
                .as_bytes()
                .to_vec(),
            },
            (Backend::Wasm, Source::Wasm(path)) => Program::Wasm {
                module: maxwell_daemon::files::read_bounded(
                    path,
                    maxwell_daemon::files::MAX_MODULE,
                    "module",
                )
                .map_err(|e| anyhow::anyhow!("{}: agent {:?}: {e}", p.origin, p.name))?,
            },
            (Backend::Wasm, Source::Native { .. }) => anyhow::bail!(
                "{}: agent {:?} is a native program, which the wasm backend cannot run; use \
                 --backend process (needs root)",
                p.origin,
                p.name
            ),
            (Backend::Process | Backend::Microvm, Source::Builtin { kind }) => {
                let path = dir.clone().unwrap_or_default().join(kind.program());
                if !path.is_file() {
                    missing.insert(kind.program());
                }
                Program::Native {
                    path,
                    args: Vec::new(),
                }
            }
            (Backend::Process | Backend::Microvm, Source::Native { path, args }) => {
                Program::Native {
                    path: path.clone(),
                    args: args.clone(),
                }
            }
            (b, Source::Wasm(_)) if b.native() => anyhow::bail!(
                "{}: agent {:?} is a wasm module, which the {} backend cannot run; use \
                 --backend wasm",
                p.origin,
                p.name,
                b.name()
            ),
            (_, Source::Wasm(_)) => unreachable!("wasm modules run on the wasm backend"),
        };
        let limits = match backend {
            Backend::Wasm => Limits {
                memory_max: Bytes(64 << 20),
                pids_max: 1,
                ..Limits::default()
            },
            Backend::Process => Limits {
                memory_max: Bytes(128 << 20),
                pids_max: 8,
                ..Limits::default()
            },
            // The guest's RAM (the VMM's own needs are added by the backend).
            Backend::Microvm => Limits {
                memory_max: maxwell_sandbox::microvm::DEFAULT_GUEST_MEMORY,
                pids_max: 64,
                ..Limits::default()
            },
        };
        out.push(Member {
            useful: p.useful,
            funds: p.funds,
            spec: AgentSpec {
                name: p.name.clone(),
                program,
                limits,
            },
        });
    }
    if !missing.is_empty() {
        let build = match backend {
            Backend::Microvm => "scripts/build-guest",
            _ => "cargo build --release -p maxwell-agents",
        };
        anyhow::bail!(
            "the {} backend runs the native agent programs, expected in {}: {} not found; \
             build them with: {build}",
            backend.name(),
            dir.unwrap_or_default().display(),
            missing.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_manifest_reads_builtins_and_funds() {
        let text = "[[agent]]\nname = \"l\"\nbuiltin = \"leech\"\nfunds = 5\n\n\
                    [[agent]]\nname = \"s0\"\nbuiltin = \"scientist\"\nfunds = \"2.5 JOULE\"\n\n\
                    [[agent]]\nname = \"s1\"\nuseful = false\nbuiltin = \"scientist\"\n";
        let p = parse(text, Path::new("m.toml")).unwrap();
        assert_eq!(p.len(), 3);
        assert!(!p[0].useful && p[1].useful && !p[2].useful);
        assert_eq!(p[0].funds, Tokens(5));
        assert_eq!(p[1].funds, Tokens(2_500_000));
        assert_eq!(p[2].funds, DEFAULT_FUNDS);
        assert!(matches!(
            p[1].source,
            Source::Builtin {
                kind: Builtin::Scientist
            }
        ));
    }

    #[test]
    fn mistakes_are_refused_with_their_line() {
        for (text, want) in [
            ("[[agent]]\nname = \"a\"\nwsam = \"x.wat\"\n", "line 3"),
            ("[[agent]]\nname = \"a\"\nbuiltin = \"sage\"\n", "line 3"),
            (
                "[[agent]]\nname = \"a\"\nbuiltin = \"scientist\"\nfunds = \"10\"\n",
                "unit",
            ),
            ("[[agent]]\nname = \"a\"\n", "exactly one of"),
            (
                "\n[[agent]]\nname = \"a b\"\nbuiltin = \"leech\"\n",
                "line 3",
            ),
            (
                "[[agent]]\nname = \"a\"\nbuiltin = \"scientist\"\n[[agent]]\nname = \"a\"\nbuiltin = \"leech\"\n",
                "line 5",
            ),
            (
                "[[agent]]\nname = \"a\"\nbuiltin = \"leech\"\n",
                "useful = true",
            ),
        ] {
            let e = format!("{:#}", parse(text, Path::new("m.toml")).unwrap_err());
            assert!(e.contains("m.toml") && e.contains(want), "{want}: {e}");
        }
    }
}
