//! One row per ztunnel setting of the operator evaluation's table that is more than a plain
//! value: what ferry does with it, written from ztunnel's rules (istio/ztunnel `src/config.rs`
//! at 62d82653), not from ferry's code.

use super::*;

fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
    move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
}

/// (case, environment, PROXY_CONFIG concurrency, CPUs available, threads)
type ThreadsRow = (&'static str, &'static [(&'static str, &'static str)], Option<u64>, usize, usize);

#[test]
fn worker_threads_follow_ztunnels_sizing() {
    #[rustfmt::skip]
    let rows: &[ThreadsRow] = &[
        ("default on 2 CPUs: the floor of 2", &[], None, 2, 2),
        ("default on 16 CPUs: a quarter", &[], None, 16, 4),
        ("default on 10 CPUs: a quarter, rounded up", &[], None, 10, 3),
        ("the request raises the default", &[("ZTUNNEL_RESOURCE_CPU_REQUEST", "3")], None, 4, 3),
        ("a milli-CPU request rounds up", &[("ZTUNNEL_RESOURCE_CPU_REQUEST", "2500m")], None, 4, 3),
        ("an explicit limit wins, even below 2", &[("ZTUNNEL_RESOURCE_CPU_LIMIT", "1")], None, 16, 1),
        ("the limit raised to the request", &[("ZTUNNEL_RESOURCE_CPU_LIMIT", "2"), ("ZTUNNEL_RESOURCE_CPU_REQUEST", "3")], None, 16, 3),
        ("ZTUNNEL_CPU_LIMIT sizes the quarter", &[("ZTUNNEL_CPU_LIMIT", "32")], None, 4, 8),
        ("a number", &[("ZTUNNEL_WORKER_THREADS", "3")], None, 16, 3),
        ("0 = every CPU", &[("ZTUNNEL_WORKER_THREADS", "0")], None, 6, 6),
        ("a percentage of the CPUs, rounded up", &[("ZTUNNEL_WORKER_THREADS", "30%")], None, 10, 3),
        ("a percentage of the CPU limit", &[("ZTUNNEL_WORKER_THREADS", "50%"), ("ZTUNNEL_CPU_LIMIT", "8")], None, 2, 4),
        ("PROXY_CONFIG concurrency", &[], Some(5), 16, 5),
        ("concurrency 0 = every CPU", &[], Some(0), 6, 6),
        ("ZTUNNEL_WORKER_THREADS over concurrency", &[("ZTUNNEL_WORKER_THREADS", "2")], Some(5), 16, 2),
    ];
    for (case, env, concurrency, cpus, want) in rows {
        assert_eq!(worker_threads(&env_of(env), *concurrency, *cpus), Ok(*want), "{case}");
    }
    #[rustfmt::skip]
    let bad: &[(&'static [(&str, &str)], &str)] = &[
        (&[("ZTUNNEL_WORKER_THREADS", "x")], "ZTUNNEL_WORKER_THREADS=\"x\""),
        (&[("ZTUNNEL_WORKER_THREADS", "150%")], "ZTUNNEL_WORKER_THREADS=\"150%\""),
        (&[("ZTUNNEL_RESOURCE_CPU_REQUEST", "lots")], "ZTUNNEL_RESOURCE_CPU_REQUEST=\"lots\""),
        (&[("ZTUNNEL_RESOURCE_CPU_LIMIT", "-1")], "ZTUNNEL_RESOURCE_CPU_LIMIT=\"-1\""),
        (&[("ZTUNNEL_CPU_LIMIT", "0")], "ZTUNNEL_CPU_LIMIT=\"0\""),
    ];
    for (env, names) in bad {
        let e = worker_threads(&env_of(env), None, 4).unwrap_err().to_string();
        assert!(e.starts_with(names), "{e}");
    }
}

#[test]
fn termination_deadline_is_ztunnels() {
    let s = Duration::from_secs;
    // (CONNECTION_TERMINATION_DEADLINE, TERMINATION_GRACE_PERIOD_SECONDS, deadline)
    let rows = [
        (None, None, s(5)),
        (None, Some(30), s(25)),
        (None, Some(11), s(6)),
        (None, Some(10), s(9)),
        (None, Some(3), s(2)),
        (None, Some(1), s(1)),
        (None, Some(0), s(1)),
        (Some(s(7)), Some(30), s(7)),
        (Some(Duration::ZERO), None, s(1)),
    ];
    for (explicit, grace, want) in rows {
        assert_eq!(termination_deadline(explicit, grace), want, "{explicit:?} {grace:?}");
    }
}

#[test]
fn proxy_config_honours_concurrency_and_refuses_the_rest() {
    assert_eq!(proxy_config_concurrency(None), Ok(None));
    assert_eq!(proxy_config_concurrency(Some("")), Ok(None));
    assert_eq!(proxy_config_concurrency(Some("concurrency: 3")), Ok(Some(3)));
    assert_eq!(proxy_config_concurrency(Some(r#"{"concurrency": 0}"#)), Ok(Some(0)));
    for (raw, says) in [
        ("proxyMetadata: {A: b}", "`proxyMetadata` is not supported"),
        ("proxyAdminPort: 15000", "FERRY_ADMIN_ADDR"),
        ("concurrency: two", "whole number"),
        ("[1, 2]", "must be a mapping"),
        ("{nope", "PROXY_CONFIG"),
    ] {
        let e = proxy_config_concurrency(Some(raw)).unwrap_err().to_string();
        assert!(e.starts_with("PROXY_CONFIG=") && e.contains(says), "{raw}: {e}");
    }
}

#[test]
fn settings_for_features_ferry_lacks_are_refused_by_name() {
    // (variable, a value ztunnel acts on, a value that means "off")
    #[rustfmt::skip]
    let rows: &[(&str, &str, &str)] = &[
        ("NETWORK", "network1", ""),
        ("CRL_PATH", "/etc/istio/crl/ca.crl", ""),
        ("FAKE_CA", "true", "false"),
        ("ENABLE_PROXY", "false", "true"),
        ("UNSTABLE_ENABLE_SOCKS5", "true", "false"),
        ("COMPLIANCE_POLICY", "pqc", ""),
        ("PREFERED_SERVICE_NAMESPACE", "istio-system", ""),
        ("ISTIO_META_DNS_CAPTURE", "true", "false"),
        ("ISTIO_META_DNS_PROXY_ADDR", "127.0.0.1:15053", ""),
        ("DNS_PROXY_ADDR", "127.0.0.1:15053", ""),
    ];
    for (var, on, off) in rows {
        let (var, on, off) = (var.to_string(), on.to_string(), off.to_string());
        let with = |v: String| {
            let var = var.clone();
            move |k: &str| (k == var).then(|| v.clone())
        };
        let e = refuse_unsupported(&with(on.clone())).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{var}={on:?}: ")), "{e}");
        assert_eq!(refuse_unsupported(&with(off)), Ok(()), "{var}");
    }
    // Other ISTIO_META_* keys are node metadata for istiod (xds::settings) and are accepted.
    assert_eq!(refuse_unsupported(&|k| (k == "ISTIO_META_ENABLE_HBONE").then(|| "true".to_string())), Ok(()));
    assert_eq!(refuse_unsupported(&|_| None), Ok(()));
}
