//! Tests of the configuration schema: the shipped example, defaults, and one table row per kind of
//! mistake an operator can make, each checked for its exact line, key and message.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use proptest::prelude::*;

use super::*;

const EXAMPLE: &str = include_str!("../../etc/recproxy.toml");

/// A complete, valid file; the bad cases below edit one line of it. Line numbers matter.
const BASE: &str = "\
[sip]
listen = [\"udp:0.0.0.0:5060\"]
pbx = \"udp:10.0.0.5:5060\"

[media]
advertise = \"192.0.2.10\"
ports = \"30000-39999\"
timeout = \"60s\"

[recording]
dir = \"/var/lib/recproxy/recordings\"
header_update = \"5s\"
";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn sip(s: &str) -> SipAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn service(
    name: &str,
    tenant: Option<&str>,
    numbers: &[&str],
    record: RecordRule,
) -> ServiceConfig {
    ServiceConfig {
        name: name.into(),
        tenant: tenant.map(Into::into),
        numbers: numbers
            .iter()
            .map(|n| n.parse().unwrap_or_else(|e| panic!("{n}: {e}")))
            .collect(),
        record,
    }
}

fn parse_str(text: &str) -> Result<Config, ConfigError> {
    parse(text, Path::new("test.toml"))
}

/// BASE with `from` replaced by `to` (which must occur exactly once, so cases stay meaningful).
fn edit(from: &str, to: &str) -> String {
    assert_eq!(
        BASE.matches(from).count(),
        1,
        "{from:?} must occur once in BASE"
    );
    BASE.replacen(from, to, 1)
}

#[test]
fn example_file_parses_to_the_documented_values() {
    let cfg = parse(EXAMPLE, Path::new("etc/recproxy.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        cfg,
        Config {
            sip: SipConfig {
                listen: vec![sip("udp:0.0.0.0:5060"), sip("tcp:0.0.0.0:5060")],
                pbx: sip("udp:10.0.0.5:5060"),
                advertise: ip("192.0.2.10"),
                max_message_size: 65535,
                max_rate: 200,
                tcp_idle_timeout: Duration::from_secs(3600),
                large_over_tcp: true,
                dns_servers: Vec::new(),
            },
            media: MediaConfig {
                bind: ip("0.0.0.0"),
                advertise: ip("192.0.2.10"),
                ports: PortRange {
                    low: 30000,
                    high: 39999
                },
                timeout: Duration::from_secs(60),
            },
            recording: RecordingConfig {
                dir: PathBuf::from("/var/lib/recproxy/recordings"),
                header_update: Duration::from_secs(5),
                mask_dtmf: false,
                wideband_rate: 16000,
                reorder_window: Duration::from_millis(60),
            },
            policy: PolicyConfig {
                sample_seed: Some("change-me".into()),
            },
            services: vec![
                service(
                    "switchboard",
                    Some("city-of-example"),
                    &["+358912340000", "+35891234*"],
                    RecordRule::All
                ),
                service(
                    "tax-office",
                    Some("tax-administration"),
                    &["+358295120000", "+35829512*"],
                    RecordRule::Sample(0.25)
                ),
                service(
                    "health-services",
                    Some("wellbeing-county"),
                    &["+358974100000"],
                    RecordRule::All
                ),
                service("other", None, &[], RecordRule::None),
            ],
            source: PathBuf::from("etc/recproxy.toml"),
        }
    );
}

#[test]
fn example_file_documents_every_key_it_sets() {
    // Every `key = value` line is preceded by a comment line: the example is the reference.
    let lines: Vec<&str> = EXAMPLE.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if line.contains(" = ") && !line.starts_with('#') {
            let previous = i.checked_sub(1).and_then(|p| lines.get(p)).copied();
            assert!(
                previous.is_some_and(|p| p.starts_with('#')),
                "line {}: `{line}` has no comment above it",
                i + 1
            );
        }
    }
}

#[test]
fn minimal_config_gets_every_default() {
    let text = "\
[sip]
listen = [\"udp:127.0.0.1:5070\"]
pbx = \"udp:10.0.0.5:5060\"
[media]
advertise = \"192.0.2.10\"
[recording]
dir = \"/tmp/rec\"
";
    let cfg = parse_str(text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.sip.listen, vec![sip("udp:127.0.0.1:5070")]);
    // The first listen IP is a real address, so it is what Via/Record-Route carry.
    assert_eq!(cfg.sip.advertise, ip("127.0.0.1"));
    assert_eq!(cfg.sip.max_message_size, 65535);
    assert_eq!(cfg.sip.max_rate, 200);
    assert_eq!(cfg.media.bind, ip("0.0.0.0"));
    assert_eq!(
        cfg.media.ports,
        PortRange {
            low: 30000,
            high: 39999
        }
    );
    assert_eq!(cfg.media.timeout, Duration::from_secs(60));
    assert_eq!(cfg.recording.dir, PathBuf::from("/tmp/rec"));
    assert_eq!(cfg.recording.header_update, Duration::from_secs(5));
    assert_eq!(cfg.source, PathBuf::from("test.toml"));
}

#[test]
fn sip_advertise_defaults_to_media_advertise_when_listening_on_any() {
    let cfg = parse_str(BASE).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.sip.advertise, ip("192.0.2.10"));
    let text = edit(
        "[\"udp:0.0.0.0:5060\"]",
        "[\"udp:[::]:0\", \"udp:10.1.1.1:5060\"]",
    );
    let cfg = parse_str(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        cfg.sip.advertise,
        ip("192.0.2.10"),
        "only the first entry counts"
    );
    let text = edit("pbx =", "advertise = \"198.51.100.7\"\npbx =");
    let cfg = parse_str(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        cfg.sip.advertise,
        ip("198.51.100.7"),
        "an explicit value wins"
    );
}

#[test]
fn accepted_variants() {
    let cases: &[(&str, String)] = &[
        ("ipv6 everywhere", {
            let t = edit("udp:0.0.0.0:5060\"]", "udp:[::1]:0\"]\n");
            t.replace(
                "advertise = \"192.0.2.10\"",
                "bind = \"::\"\nadvertise = \"2001:db8::10\"",
            )
        }),
        (
            "inline tables",
            "sip = { listen = [\"udp:127.0.0.1:0\"], pbx = \"udp:127.0.0.1:5090\" }\n\
              media = { advertise = \"127.0.0.1\", ports = \"40000-40003\" }\n\
              recording = { dir = \"rec\", header_update = \"100ms\" }\n"
                .to_owned(),
        ),
        (
            "dotted keys",
            "sip.listen = [\"udp:127.0.0.1:0\"]\nsip.pbx = \"udp:127.0.0.1:5090\"\n\
              media.advertise = \"127.0.0.1\"\nrecording.dir = \"rec\"\n"
                .to_owned(),
        ),
        ("crlf line endings", BASE.replace('\n', "\r\n")),
        (
            "limits",
            edit("timeout = \"60s\"", "timeout = \"24h\"\n")
                .replace("\"5s\"", "\"1m\"")
                .replace("pbx =", "max_message_size = 1024\npbx ="),
        ),
    ];
    for (name, text) in cases {
        if let Err(e) = parse_str(text) {
            panic!("{name}: {e}\n{text}");
        }
    }
}

/// (case, text, line, column or 0 = any, key, message fragment)
type BadCase = (
    &'static str,
    String,
    usize,
    usize,
    &'static str,
    &'static str,
);

fn bad_cases() -> Vec<BadCase> {
    let missing_recording = BASE
        .split_once("[recording]")
        .map(|(head, _)| head.to_owned())
        .unwrap_or_default();
    vec![
        (
            "unknown key in [sip]",
            edit("pbx =", "proxy = true\npbx ="),
            3,
            1,
            "sip.proxy",
            "unknown key `proxy`",
        ),
        (
            "unknown key in [media]",
            edit("ports =", "portz ="),
            7,
            1,
            "media.portz",
            "unknown key `portz`, expected one of",
        ),
        (
            "unknown key in [recording]",
            edit("header_update", "header_updates"),
            12,
            1,
            "recording.header_updates",
            "unknown key",
        ),
        (
            "unknown key in inline table",
            "sip = { listen = [\"udp:0.0.0.0:5060\"], pbx = \"udp:10.0.0.5:5060\", proxi = 1 }\n\
              [media]\nadvertise = \"192.0.2.10\"\n[recording]\ndir = \"d\"\n"
                .to_owned(),
            1,
            0,
            "sip.proxi",
            "unknown key `proxi`",
        ),
        (
            "unknown key after [recording]",
            format!("{BASE}extra = {{ key = 1 }}\n"),
            13,
            1,
            "recording.extra",
            "unknown key `extra`",
        ),
        (
            "unknown table",
            format!("{BASE}\n[catalog]\npath = \"/var/lib/recproxy/catalog.sqlite\"\n"),
            14,
            2,
            "catalog",
            "unknown key `catalog`",
        ),
        (
            "table given as array of tables",
            edit("[sip]", "[[sip]]"),
            1,
            1,
            "sip",
            "[[sip]] declares an array of tables, but `sip` is one table: write [sip]",
        ),
        (
            "bad transport",
            edit("udp:0.0.0.0:5060", "xdp:0.0.0.0:5060"),
            2,
            11,
            "sip.listen",
            "unknown transport \"xdp\"",
        ),
        (
            "missing port",
            edit("udp:10.0.0.5:5060", "udp:10.0.0.5"),
            3,
            7,
            "sip.pbx",
            "missing port",
        ),
        (
            "hostname instead of IP",
            edit("udp:10.0.0.5:5060", "udp:pbx.example.com:5060"),
            3,
            7,
            "sip.pbx",
            "hostnames are not accepted",
        ),
        (
            "bad tcp listen on a continuation line",
            edit(
                "[\"udp:0.0.0.0:5060\"]",
                "[\n  \"udp:0.0.0.0:5060\",\n  \"tcp:0.0.0.0:70000\",\n]",
            ),
            4,
            3,
            "sip.listen",
            "port \"70000\"",
        ),
        (
            "tcp pbx without a tcp listener",
            edit("udp:10.0.0.5:5060", "tcp:10.0.0.5:5060"),
            3,
            7,
            "sip.pbx",
            "the PBX is reached over tcp but sip.listen has no tcp address",
        ),
        (
            "tcp idle timeout out of range",
            edit("[sip]", "[sip]\ntcp_idle_timeout = \"1s\""),
            2,
            20,
            "sip.tcp_idle_timeout",
            "out of range",
        ),
        (
            "reorder window too long",
            edit(
                "header_update = \"5s\"",
                "header_update = \"5s\"\nreorder_window = \"5s\"",
            ),
            13,
            18,
            "recording.reorder_window",
            "out of range",
        ),
        (
            "wideband rate not offered",
            edit(
                "header_update = \"5s\"",
                "header_update = \"5s\"\nwideband_rate = 44100",
            ),
            13,
            17,
            "recording.wideband_rate",
            "44100 Hz is not offered",
        ),
        (
            "dns server not an address",
            edit("[sip]", "[sip]\ndns_servers = [\"ns1.example.com\"]"),
            2,
            16,
            "sip.dns_servers",
            "hostnames are not accepted",
        ),
        (
            "large_over_tcp not a boolean",
            edit("[sip]", "[sip]\nlarge_over_tcp = \"yes\""),
            2,
            18,
            "sip.large_over_tcp",
            "",
        ),
        (
            "empty listen",
            edit("[\"udp:0.0.0.0:5060\"]", "[]"),
            2,
            10,
            "sip.listen",
            "at least one address",
        ),
        (
            "listen twice",
            edit(
                "[\"udp:0.0.0.0:5060\"]",
                "[\"udp:0.0.0.0:5060\", \"udp:0.0.0.0:5060\"]",
            ),
            2,
            31,
            "sip.listen",
            "listed twice",
        ),
        (
            "sip.advertise unspecified",
            edit("pbx =", "advertise = \"::\"\npbx ="),
            3,
            13,
            "sip.advertise",
            "unspecified address",
        ),
        (
            "max_message_size too small",
            edit("pbx =", "max_message_size = 512\npbx ="),
            3,
            20,
            "sip.max_message_size",
            "between 1024 and 65535",
        ),
        (
            "max_message_size not an integer",
            edit("pbx =", "max_message_size = \"64k\"\npbx ="),
            3,
            20,
            "sip.max_message_size",
            "expected an integer",
        ),
        (
            "ports reversed",
            edit("30000-39999", "40000-30000"),
            7,
            9,
            "media.ports",
            "LOW (40000) must be lower than HIGH (30000)",
        ),
        (
            "odd low port",
            edit("30000-39999", "30001-39999"),
            7,
            9,
            "media.ports",
            "must be even",
        ),
        (
            "range too small",
            edit("30000-39999", "30000-30002"),
            7,
            9,
            "media.ports",
            "at least 4 are needed",
        ),
        (
            "timeout zero",
            edit("\"60s\"", "\"0s\""),
            8,
            11,
            "media.timeout",
            "must be between 1s and 24h",
        ),
        (
            "timeout without unit",
            edit("\"60s\"", "\"60\""),
            8,
            11,
            "media.timeout",
            "has no unit: write e.g. \"60s\"",
        ),
        (
            "timeout as integer",
            edit("\"60s\"", "60"),
            8,
            11,
            "media.timeout",
            "invalid type: integer `60`, expected a string",
        ),
        (
            "header_update too long",
            edit("\"5s\"", "\"10m\""),
            12,
            17,
            "recording.header_update",
            "must be between 100ms and 60s",
        ),
        (
            "media.advertise unspecified",
            edit("advertise = \"192.0.2.10\"", "advertise = \"0.0.0.0\""),
            6,
            13,
            "media.advertise",
            "nothing can be sent to 0.0.0.0",
        ),
        (
            "media.advertise hostname",
            edit(
                "advertise = \"192.0.2.10\"",
                "advertise = \"media.example.com\"",
            ),
            6,
            13,
            "media.advertise",
            "hostnames are not accepted",
        ),
        (
            "media.bind hostname",
            edit("[media]\n", "[media]\nbind = \"localhost\"\n"),
            6,
            8,
            "media.bind",
            "hostnames are not accepted",
        ),
        (
            "ipv6 advertise on ipv4 bind",
            edit("\"192.0.2.10\"", "\"2001:db8::10\""),
            6,
            13,
            "media.advertise",
            "is IPv6 but media.bind (0.0.0.0) is IPv4",
        ),
        (
            "missing sip.pbx",
            edit("pbx = \"udp:10.0.0.5:5060\"\n", ""),
            1,
            2,
            "sip.pbx",
            "missing required key",
        ),
        (
            "missing media.advertise",
            edit("advertise = \"192.0.2.10\"\n", ""),
            5,
            2,
            "media.advertise",
            "missing required key",
        ),
        (
            "missing [recording]",
            missing_recording,
            1,
            1,
            "recording.dir",
            "missing required key: there is no [recording] table",
        ),
        (
            "empty recording.dir",
            edit("\"/var/lib/recproxy/recordings\"", "\"\""),
            11,
            7,
            "recording.dir",
            "must not be empty",
        ),
        (
            "syntax error: unterminated string",
            edit("\"udp:10.0.0.5:5060\"", "\"udp:10.0.0.5:5060"),
            3,
            0,
            "sip.pbx",
            "invalid basic string",
        ),
        (
            "syntax error: duplicate key",
            edit(
                "timeout = \"60s\"",
                "timeout = \"60s\"\nports = \"30000-30003\"",
            ),
            9,
            0,
            "media.ports",
            "duplicate key",
        ),
        (
            "syntax error: garbage first line",
            format!("!!!\n{BASE}"),
            1,
            1,
            "(top level)",
            "invalid",
        ),
    ]
}

#[test]
fn every_kind_of_mistake_is_reported_at_its_line_and_key() {
    for (case, text, line, column, key, fragment) in bad_cases() {
        match parse_str(&text) {
            Ok(cfg) => panic!("{case}: accepted: {cfg:?}\n{text}"),
            Err(ConfigError::Invalid {
                file,
                line: got_line,
                column: got_column,
                key: got_key,
                message,
            }) => {
                let got = format!("{got_line}:{got_column} `{got_key}`: {message}");
                assert_eq!(file, PathBuf::from("test.toml"), "{case}");
                assert_eq!(got_line, line, "{case}: {got}\n{text}");
                if column != 0 {
                    assert_eq!(got_column, column, "{case}: {got}\n{text}");
                }
                assert_eq!(got_key, key, "{case}: {got}");
                assert!(message.contains(fragment), "{case}: {got}");
                assert!(!message.contains('\n'), "{case}: one-line message: {got}");
            }
            Err(other) => panic!("{case}: wrong error kind: {other}"),
        }
    }
}

#[test]
fn invalid_error_display_names_file_line_column_and_key() {
    let err = parse(
        &edit("ports =", "portz ="),
        Path::new("/etc/recproxy/recproxy.toml"),
    )
    .expect_err("unknown key must be rejected");
    assert_eq!(
        err.to_string(),
        "/etc/recproxy/recproxy.toml:7:1: `media.portz`: unknown key `portz`, expected one of \
         `bind`, `advertise`, `ports`, `timeout`"
    );
}

#[test]
fn load_reads_the_file_and_names_it() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("recproxy.toml");
    std::fs::write(&path, BASE).unwrap_or_else(|e| panic!("{e}"));
    let cfg = load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.source, path);
    assert_eq!(cfg.media.advertise, ip("192.0.2.10"));

    let missing = dir.path().join("absent.toml");
    match load(&missing) {
        Err(e @ ConfigError::Read { .. }) => {
            let shown = e.to_string();
            assert!(
                shown.starts_with(&format!("{}: ", missing.display())),
                "{shown}"
            );
        }
        other => panic!("expected a read error, got {other:?}"),
    }

    std::fs::write(&path, edit("\"60s\"", "\"60\"")).unwrap_or_else(|e| panic!("{e}"));
    match load(&path) {
        Err(ConfigError::Invalid { file, line, .. }) => {
            assert_eq!(file, path);
            assert_eq!(line, 8);
        }
        other => panic!("expected an invalid-config error, got {other:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn sip_addr_display_parses_back(udp in any::<bool>(), addr in any::<std::net::SocketAddr>()) {
        let addr = match addr {
            // Scope and flow info are not part of the config syntax.
            std::net::SocketAddr::V6(v6) => std::net::SocketAddr::new(IpAddr::V6(*v6.ip()), v6.port()),
            v4 => v4,
        };
        let transport = if udp { Transport::Udp } else { Transport::Tcp };
        let original = SipAddr { transport, addr };
        prop_assert_eq!(original.to_string().parse::<SipAddr>(), Ok(original));
    }

    #[test]
    fn port_range_display_parses_back(half in 512u16..32766, extra in 3u16..20000) {
        let low = half * 2;
        let range = PortRange { low, high: low.saturating_add(extra) };
        prop_assert_eq!(range.to_string().parse::<PortRange>(), Ok(range));
    }

    #[test]
    fn any_text_gives_a_config_or_a_located_error(text in "[\\[\\]a-z=\" .:0-9\n-]{0,120}") {
        // Never panics; an error always points inside the text.
        if let Err(ConfigError::Invalid { line, column, .. }) = parse_str(&text) {
            prop_assert!(line >= 1 && line <= text.lines().count().max(1) + 1);
            prop_assert!(column >= 1);
        }
    }

    #[test]
    fn base_with_one_line_mangled_never_panics(line in 0usize..12, junk in "[ -~]{0,30}") {
        let text: String = BASE
            .lines()
            .enumerate()
            .map(|(i, l)| if i == line { format!("{junk}\n") } else { format!("{l}\n") })
            .collect();
        if let Err(ConfigError::Invalid { line: got, key, .. }) = parse_str(&text) {
            prop_assert!((1..=13).contains(&got), "line {} for {:?}", got, text);
            // Only a quoted empty key (`"" = 1`) may yield an empty key name.
            prop_assert!(!key.is_empty() || text.contains("\"\"") || text.contains("''"));
        }
    }
}

/// BASE plus a policy and three services (from line 13 on); the service cases edit one line.
const SERVICES: &str = "\
[policy]
sample_seed = \"s\"

[[service]]
name = \"switchboard\"
tenant = \"city\"
numbers = [\"0912340000\", \"091234*\"]
record = \"all\"

[[service]]
name = \"tax\"
numbers = [\"029512*\"]
record = { sample = 0.25 }

[[service]]
name = \"other\"
record = \"none\"
";

/// BASE + SERVICES with `from` (occurring once) replaced by `to`.
fn edit_services(from: &str, to: &str) -> String {
    let text = format!("{BASE}{SERVICES}");
    assert_eq!(text.matches(from).count(), 1, "{from:?} must occur once");
    text.replacen(from, to, 1)
}

#[test]
fn services_parse_in_file_order_and_without_them_nothing_changes() {
    let cfg = parse_str(&format!("{BASE}{SERVICES}")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.policy.sample_seed.as_deref(), Some("s"));
    assert_eq!(
        cfg.services,
        vec![
            service(
                "switchboard",
                Some("city"),
                &["0912340000", "091234*"],
                RecordRule::All
            ),
            service("tax", None, &["029512*"], RecordRule::Sample(0.25)),
            service("other", None, &[], RecordRule::None),
        ]
    );
    // An exact number before the prefix it is carved out of is an exception, not a conflict;
    // the shares 0 and 1 are allowed, and so are integers for them.
    let text = edit_services("[\"029512*\"]", "[\"0295120001\", \"029512*\"]")
        .replace("sample = 0.25", "sample = 1");
    let cfg = parse_str(&text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.services[1].record, RecordRule::Sample(1.0));
    let cfg = parse_str(BASE).unwrap_or_else(|e| panic!("{e}"));
    assert!(cfg.services.is_empty());
    assert_eq!(cfg.policy, PolicyConfig::default());
}

#[test]
fn service_mistakes_are_reported_with_their_exact_message() {
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "unknown key in a service",
            edit_services("tenant = \"city\"", "colour = \"red\""),
            "test.toml:18:1: `service.colour`: unknown key `colour`, expected one of `name`, \
             `tenant`, `numbers`, `record`",
        ),
        (
            "unknown key in the record table",
            edit_services("sample = 0.25", "share = 0.25"),
            "test.toml:25:12: `service.record.share`: unknown key `share`, expected `sample`",
        ),
        (
            "unknown key in [policy]",
            edit_services("sample_seed = \"s\"", "seed = \"s\""),
            "test.toml:14:1: `policy.seed`: unknown key `seed`, expected `sample_seed`",
        ),
        (
            "sample above 1",
            edit_services("sample = 0.25", "sample = 1.5"),
            "test.toml:25:21: `service.record.sample`: 1.5 is out of range: the share of the \
             service's calls that is recorded must be between 0.0 and 1.0",
        ),
        (
            "sample below 0",
            edit_services("sample = 0.25", "sample = -0.1"),
            "test.toml:25:21: `service.record.sample`: -0.1 is out of range: the share of the \
             service's calls that is recorded must be between 0.0 and 1.0",
        ),
        (
            "record word unknown",
            edit_services("record = \"all\"", "record = \"some\""),
            "test.toml:20:10: `service.record`: \"some\" is not a recording rule: write \"all\", \
             \"none\" or { sample = 0.25 }",
        ),
        (
            "record of the wrong type",
            edit_services("record = \"all\"", "record = 5"),
            "test.toml:20:10: `service.record`: invalid type: integer `5`, expected \"all\", \
             \"none\" or { sample = 0.25 }",
        ),
        (
            "duplicate name",
            edit_services("name = \"tax\"", "name = \"switchboard\""),
            "test.toml:23:8: `service.name`: \"switchboard\" is already the name of the service \
             on line 17: each service needs its own name (sidecars tell services apart by it)",
        ),
        (
            "number taken by an earlier service's prefix",
            edit_services("[\"029512*\"]", "[\"0912340001\"]"),
            "test.toml:24:12: `service.numbers`: \"0912340001\" can never match: service \
             \"switchboard\" on line 17 comes first and its \"091234*\" already matches every \
             number it does (the first matching service wins); remove it, or move the more \
             specific service first",
        ),
        (
            "number identical to an earlier service's",
            edit_services("[\"029512*\"]", "[\"0912340000\"]"),
            "test.toml:24:12: `service.numbers`: \"0912340000\" can never match: service \
             \"switchboard\" on line 17 comes first and its \"0912340000\" already matches every \
             number it does (the first matching service wins); remove it, or move the more \
             specific service first",
        ),
        (
            "prefix inside an earlier prefix of the same service",
            edit_services(
                "[\"0912340000\", \"091234*\"]",
                "[\"0912*\", \"091234*\"]",
            ),
            "test.toml:19:21: `service.numbers`: \"091234*\" can never match: \"0912*\" before it \
             in this service already matches every number it does",
        ),
        (
            "service after the default",
            format!("{BASE}{SERVICES}\n[[service]]\nname = \"late\"\nnumbers = [\"1\"]\nrecord = \"all\"\n"),
            "test.toml:32:8: `service.name`: service \"late\" can never match: the default \
             service \"other\" on line 28 (no `numbers`) comes first and takes every call; put \
             the default service last",
        ),
        (
            "sampling without a seed",
            edit_services("sample_seed = \"s\"\n", ""),
            "test.toml:24:10: `service.record`: sampling needs a seed: add `sample_seed = \
             \"...\"` to [policy] (the Call-ID hashed with the seed decides which calls are \
             recorded, so the choice is reproducible and callers cannot predict it)",
        ),
        (
            "empty seed",
            edit_services("sample_seed = \"s\"", "sample_seed = \" \""),
            "test.toml:14:15: `policy.sample_seed`: must not be empty: sampling hashes the \
             Call-ID with this seed, and an empty one lets anyone predict which calls are \
             recorded",
        ),
        (
            "empty numbers",
            edit_services("[\"029512*\"]", "[]"),
            "test.toml:24:11: `service.numbers`: empty list: leave `numbers` out to make this \
             the default service, or list called numbers such as \"+358295120000\" or prefixes \
             such as \"+35829512*\"",
        ),
        (
            "number with a star inside",
            edit_services("[\"029512*\"]", "[\"0295*12\"]"),
            "test.toml:24:12: `service.numbers`: \"0295*12\": * may only end a prefix, e.g. \
             \"+35829512*\"",
        ),
        (
            "missing name",
            edit_services("name = \"tax\"\n", ""),
            "test.toml:22:1: `service.name`: missing required key: add `name = \
             \"switchboard\"` to this [[service]]",
        ),
        (
            "missing record",
            edit_services("record = \"none\"\n", ""),
            "test.toml:27:1: `service.record`: missing required key: add `record = \"all\"` \
             (or \"none\", or { sample = 0.25 }) to this [[service]]",
        ),
    ];
    for (case, text, expected) in cases {
        match parse_str(&text) {
            Ok(cfg) => panic!("{case}: accepted: {:?}\n{text}", cfg.services),
            Err(e) => assert_eq!(e.to_string(), expected, "{case}\n{text}"),
        }
    }
}
