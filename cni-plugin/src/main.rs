//! The `ferry-cni` executable: gathers the environment and stdin, runs the plugin, prints the reply.
#![forbid(unsafe_code)]

use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::process::ExitCode;

use ferry_cni::{CniError, Env};

fn main() -> ExitCode {
    let env: Env = std::env::vars_os().collect();
    let stdin = ferry_cni::read_input(io::stdin().lock());
    // Last line of defence: a bug must still leave the runtime a CNI error, not a bare panic.
    let invocation = panic::catch_unwind(AssertUnwindSafe(|| match &stdin {
        Ok(bytes) => ferry_cni::execute(&env, bytes),
        Err(err) => ferry_cni::failure(&env, &[], err),
    }))
    .unwrap_or_else(|_| ferry_cni::failure(&env, &[], &CniError::Internal("the plugin panicked; see stderr".to_string())));
    ExitCode::from(invocation.emit(&mut io::stdout().lock(), &mut io::stderr().lock()))
}
