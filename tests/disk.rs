//! Running out of room for recordings: the daemon runs under a file-size limit (ulimit -f, the
//! stand-in here for a full disk: writes past it fail with EFBIG as they would with ENOSPC).
//! The recording that hits it stops cleanly while its call goes on, its sidecar and the log say
//! so, and the next call is recorded again.

mod support;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::Duration;

use recproxy::codec::Codec;
use recproxy::demo::ua::{Answer, CallSpec, Outcome, Pbx, Phone};
use support::{dominance, write_config, Daemon, Wav};

/// 5 s of 8 kHz stereo 16-bit audio (32,000 bytes a second) plus the header.
const FILE_LIMIT: u64 = 5 * 32_000 + 44;

#[test]
fn a_recording_that_runs_out_of_room_stops_the_call_goes_on_and_the_next_is_recorded() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let root = tempfile::tempdir().unwrap();
    let pbx = rt
        .block_on(Pbx::bind("127.0.0.1:0".parse().unwrap()))
        .unwrap();
    let config = write_config(root.path(), pbx.local_addr(), (49000, 49099), "");
    let daemon = Daemon::start_with(&config, |cmd| {
        // SAFETY: setrlimit is async-signal-safe and touches nothing of the parent.
        unsafe {
            cmd.pre_exec(|| {
                let limit = libc::rlimit {
                    rlim_cur: FILE_LIMIT,
                    rlim_max: FILE_LIMIT,
                };
                if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
    let mut pbx = {
        let _guard = rt.enter();
        pbx.spawn(std::sync::Arc::new(|_: &str| Answer::Accept {
            ring: Duration::from_millis(100),
            tone_hz: 1000.0,
        }))
    };
    let call = |talk: u64| {
        let spec = CallSpec::new(
            "0401234567",
            "0295120000",
            Codec::Pcmu,
            440.0,
            Duration::from_secs(talk),
        );
        rt.block_on(async {
            let phone = Phone::bind("127.0.0.1".parse().unwrap()).await.unwrap();
            phone.call(daemon.sip, &spec).await.unwrap()
        })
    };

    // 7 s of talk: the file is full after 5.
    let long = call(7);
    assert_eq!(long.outcome, Outcome::Answered);
    let uas = rt
        .block_on(pbx.next_report(Duration::from_secs(10)))
        .unwrap();
    // The call itself went on to its end, media both ways.
    let (got, sent) = (long.rtp.unwrap().received, uas.rtp.unwrap().received);
    assert!(
        got >= 340 && sent >= 340,
        "media cut: {got} / {sent} of 350"
    );
    let (_, v) = daemon.final_sidecar(&long.call_id);
    assert_eq!(v["end_reason"], "bye_caller", "{v:#}");
    assert_eq!(v["service"]["decision"], "failed", "{v:#}");
    // The write that failed names the error (EFBIG); which write met the limit (an append, a
    // header update, or the flush at the end) depends on buffering.
    let reason = v["service"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("os error 27"), "{v:#}");
    // What was written before is kept, playable and accounted for.
    let wav = Wav::read(Path::new(v["wav"]["path"].as_str().unwrap()));
    let ms = wav.duration_ms();
    assert!((4000..=5000).contains(&ms), "{ms} ms kept");
    assert_eq!(v["wav"]["duration_ms"].as_u64(), Some(ms), "{v:#}");
    assert!(dominance(&wav.left[8000..24_000], 8000, 440.0, &[1000.0]) > 50.0);
    let log = daemon.log_text();
    assert!(
        log.contains("recording stopped; the call goes on")
            || log.contains("recording cut short: the disk refused its last audio"),
        "the log says nothing of it"
    );

    // The next call starts a new file and is recorded whole.
    let short = call(2);
    assert_eq!(short.outcome, Outcome::Answered);
    rt.block_on(pbx.next_report(Duration::from_secs(10)))
        .unwrap();
    let (_, v) = daemon.final_sidecar(&short.call_id);
    assert_eq!(v["state"], "complete", "{v:#}");
    assert_ne!(v["service"]["decision"], "failed", "{v:#}");
    let wav = Wav::read(Path::new(v["wav"]["path"].as_str().unwrap()));
    assert!(
        (1900..=2200).contains(&wav.duration_ms()),
        "{} ms",
        wav.duration_ms()
    );
}
