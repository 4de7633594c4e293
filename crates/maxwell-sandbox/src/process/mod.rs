//! Native agents in cgroups (placeholder until the process backend lands).

use crate::{Agent, AgentSpec, Sandbox, SandboxError};

/// The process backend.
pub struct ProcessSandbox {}

impl ProcessSandbox {
    /// Detects cgroups and privileges.
    pub fn new() -> Result<ProcessSandbox, SandboxError> {
        Err(SandboxError::Unavailable(
            "process backend not built yet".into(),
        ))
    }
}

impl Sandbox for ProcessSandbox {
    fn name(&self) -> &'static str {
        "process"
    }
    fn spawn(&self, _spec: &AgentSpec) -> Result<Box<dyn Agent>, SandboxError> {
        Err(SandboxError::Unavailable(
            "process backend not built yet".into(),
        ))
    }
}
