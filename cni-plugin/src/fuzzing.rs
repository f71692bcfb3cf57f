//! Entry point for the `cni_invocation` fuzz target (feature `fuzzing`, never in a release
//! build): everything the plugin derives from the runtime's environment and stdin before it
//! talks to the agent, run exactly as `dispatch` runs it, including the failure reply.

use std::ffi::OsString;

use crate::config::{self, Command, Env};

/// `data` is environment lines (`KEY=VALUE`, raw bytes) up to the first empty line, then stdin.
pub fn invocation(data: &[u8]) {
    let (env_part, stdin) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &[][..]),
    };
    let mut env = Env::new();
    for line in env_part.split(|b| *b == b'\n') {
        if let Some(eq) = line.iter().position(|b| *b == b'=') {
            env.insert(os(&line[..eq]), os(&line[eq + 1..]));
        }
    }
    if let Err(e) = parse(&env, stdin) {
        // The failure path renders a reply from the same untrusted stdin.
        let _ = crate::failure(&env, stdin, &e);
    }
}

fn parse(env: &Env, stdin: &[u8]) -> Result<(), crate::CniError> {
    let cmd = config::command(env)?;
    let _ = config::pod_label(env);
    if matches!(cmd, Command::Version | Command::Gc) {
        return Ok(());
    }
    let conf = config::parse_netconf(stdin)?;
    if matches!(cmd, Command::Add | Command::Del | Command::Check) {
        config::pod_context(env, cmd)?;
    }
    if let Some(prev) = conf.prev_result.as_ref() {
        config::pod_ips(prev)?;
        crate::chained_result(prev, &conf.cni_version)?;
    }
    Ok(())
}

fn os(b: &[u8]) -> OsString {
    use std::os::unix::ffi::OsStringExt;
    OsString::from_vec(b.to_vec())
}
