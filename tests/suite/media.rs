//! The media helper: FFmpeg's libraries in a sandboxed, long-lived process of the narra binary.
//! Jobs go through it with no program started; its sandbox refuses what it must (files outside
//! scratch, sockets), each fallback included, as root and as another user; an input that kills it
//! fails only its own job, as `media_crash`; a stuck request is killed at its timeout; and the
//! programs' path (`NARRA_MEDIA=cli`) stays the oracle it is compared with, input for input.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;

use narra::model::ErrorClass;
use narra::steps::Progress;
use narra::steps::extract::{Tools, extract, probe};
use narra::steps::media::protocol::{Request, Response, read_frame, write_frame};
use narra::steps::media::sandbox::{DISABLE_ENV, Limits, SelfCheck};
use narra::steps::media::{HELPER_ARG, HelperPool, Media};
use narra::workflow::{AudioMode, ExtractParams, TranscodeTarget};

use super::fixture::{Home, TEST_VIDEO, X264, ffmpeg, ffprobe, id_of, sample_video, wait_until};

fn narra_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_narra"))
}

/// A stand-in for ffmpeg or ffprobe that leaves a mark and fails: proof that nobody ran it.
fn failing_tool(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let mark = dir.join(format!("{name}.ran"));
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!("#!/bin/sh\ntouch {}\nexit 1\n", mark.display()),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    (path, mark)
}

const TONE: [&str; 4] = ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"];

/// The corpus: every codec and container the tests use, with what must happen to each. A name, the
/// ffmpeg arguments that make it (after the inputs), whether it has a video input.
fn corpus(dir: &Path) -> Vec<PathBuf> {
    let cases: [(&str, &[&str], bool); 12] = [
        (
            "aac.mp4",
            &["-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac"],
            true,
        ),
        (
            "opus.webm",
            &[
                "-c:v",
                "libvpx-vp9",
                "-deadline",
                "realtime",
                "-cpu-used",
                "8",
                "-c:a",
                "libopus",
            ],
            true,
        ),
        ("vorbis.ogg", &["-c:a", "libvorbis"], false),
        (
            "mp3.mkv",
            &[
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-c:a",
                "libmp3lame",
            ],
            true,
        ),
        ("ac3.avi", &["-c:v", "mpeg4", "-c:a", "ac3"], true),
        (
            "aac.ts",
            &[
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-c:a",
                "aac",
                "-f",
                "mpegts",
            ],
            true,
        ),
        (
            "pcm_be.mov",
            &[
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-c:a",
                "pcm_s16be",
            ],
            true,
        ),
        ("flac.flac", &["-c:a", "flac"], false),
        ("s16.wav", &["-c:a", "pcm_s16le"], false),
        ("s24.wav", &["-c:a", "pcm_s24le"], false),
        ("stereo.mp3", &["-ac", "2", "-c:a", "libmp3lame"], false),
        ("alac.m4a", &["-c:a", "alac"], false),
    ];
    let mut files = Vec::new();
    for (name, codec, video) in cases {
        let path = dir.join(name);
        let mut args: Vec<&str> = Vec::new();
        if video {
            args.extend(TEST_VIDEO);
        }
        args.extend(TONE);
        args.extend(["-t", "1.5"]);
        if video {
            args.extend(["-pix_fmt", "yuv420p"]);
        }
        args.extend(codec);
        ffmpeg(&args, &path);
        files.push(path);
    }
    // No audio; two languages (the second preferred below); HLS-style AAC in MP4.
    let video_only = dir.join("video_only.mp4");
    let mut args: Vec<&str> = TEST_VIDEO.to_vec();
    args.extend(["-t", "1.5"]);
    args.extend(X264);
    ffmpeg(&args, &video_only);
    files.push(video_only);
    let languages = dir.join("languages.mkv");
    let mut args: Vec<&str> = TEST_VIDEO.to_vec();
    args.extend(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"]);
    args.extend(["-f", "lavfi", "-i", "sine=frequency=880:sample_rate=22050"]);
    args.extend(["-t", "1.5", "-map", "0:v", "-map", "1:a", "-map", "2:a"]);
    args.extend(X264);
    args.extend(["-c:a:0", "aac", "-c:a:1", "libopus"]);
    args.extend([
        "-metadata:s:a:0",
        "language=eng",
        "-metadata:s:a:1",
        "language=fra",
    ]);
    ffmpeg(&args, &languages);
    files.push(languages);
    let fragmented = dir.join("fragmented.mp4");
    let mut args: Vec<&str> = TEST_VIDEO.to_vec();
    args.extend(TONE);
    args.extend(["-t", "1.5"]);
    args.extend(X264);
    args.extend([
        "-c:a",
        "aac",
        "-movflags",
        "frag_keyframe+empty_moov+default_base_moof",
    ]);
    ffmpeg(&args, &fragmented);
    files.push(fragmented);
    // Broken: truncated, garbage, empty, an HLS playlist named .mp4.
    let whole = std::fs::read(&files[0]).unwrap();
    let truncated = dir.join("truncated.mp4");
    std::fs::write(&truncated, &whole[..whole.len() / 2]).unwrap();
    files.push(truncated);
    let webm = std::fs::read(&files[1]).unwrap();
    let truncated_webm = dir.join("truncated.webm");
    std::fs::write(&truncated_webm, &webm[..webm.len() / 2]).unwrap();
    files.push(truncated_webm);
    let garbage = dir.join("garbage.mp4");
    std::fs::write(
        &garbage,
        (0..65_536u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    files.push(garbage);
    let empty = dir.join("empty.mp4");
    std::fs::write(&empty, b"").unwrap();
    files.push(empty);
    let playlist = dir.join("playlist.mp4");
    std::fs::write(
        &playlist,
        "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n/etc/passwd\n#EXT-X-ENDLIST\n",
    )
    .unwrap();
    files.push(playlist);
    files
}

/// The workflows' extract parameters the differential test runs each input through.
fn param_sets() -> Vec<(&'static str, ExtractParams)> {
    let transcode = |audio, sample_rate, channels| ExtractParams {
        audio,
        sample_rate,
        channels,
        ..ExtractParams::default()
    };
    vec![
        ("copy", ExtractParams::default()),
        ("asr", transcode(AudioMode::Flac, Some(16_000), Some(1))),
        ("wav", transcode(AudioMode::Wav, None, None)),
        ("opus", transcode(AudioMode::Opus, None, Some(1))),
        ("mp3", transcode(AudioMode::Mp3, Some(22_050), Some(2))),
        (
            "french",
            ExtractParams {
                preferred_language: Some("fra".into()),
                fallback: TranscodeTarget::Wav,
                ..ExtractParams::default()
            },
        ),
    ]
}

/// One audio stream's facts, as ffprobe reads them.
#[derive(Debug, PartialEq)]
struct AudioFacts {
    codec: String,
    format: String,
    sample_rate: String,
    channels: u64,
}

fn audio_facts(path: &Path) -> (AudioFacts, f64, f64) {
    let probe = ffprobe(path);
    let stream = &probe["streams"][0];
    let sample_rate = stream["sample_rate"].as_str().unwrap_or("?").to_string();
    let duration = stream["duration"]
        .as_str()
        .or(probe["format"]["duration"].as_str())
        .and_then(|duration| duration.parse::<f64>().ok())
        .unwrap_or(f64::NAN);
    // One audio frame at most: 2048 samples covers AAC, MP3, Opus and FLAC's default blocks.
    let frame_s = 4608.0 / sample_rate.parse::<f64>().unwrap_or(8000.0);
    (
        AudioFacts {
            codec: stream["codec_name"].as_str().unwrap_or("?").to_string(),
            format: probe["format"]["format_name"]
                .as_str()
                .unwrap_or("?")
                .to_string(),
            sample_rate,
            channels: stream["channels"].as_u64().unwrap_or(0),
        },
        duration,
        frame_s,
    )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn helper_tools(scratch_root: &Path) -> Tools {
    Tools {
        media: Media::Helpers(Arc::new(HelperPool::new(
            narra_binary(),
            scratch_root.to_path_buf(),
            Vec::new(),
            Limits::default(),
        ))),
        ..Tools::default()
    }
}

// Guards the helper against its oracle: every input of the corpus under every parameter set gives,
// through the helper and through the programs, the same outcome: the same stream, container and
// codec, or the same error class; audio of the same sample rate and channels lasting the same
// within one frame.
#[test]
fn the_helper_and_the_programs_agree_on_the_whole_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let scratch = dir.path().join("scratch");
    let inputs_dir = scratch.join("inputs");
    std::fs::create_dir_all(&inputs_dir).unwrap();
    let inputs = corpus(&inputs_dir);
    let helper = helper_tools(&scratch);
    let programs = Tools::default();
    let runtime = runtime();
    let (_cancel_sender, cancel) = tokio::sync::watch::channel(false);
    let (progress, _) = tokio::sync::watch::channel(Progress::default());
    let mut compared = 0;
    for input in &inputs {
        for (name, params) in param_sets() {
            let label = format!("{} / {name}", input.file_name().unwrap().to_string_lossy());
            let run = |tools: &Tools, path: &str| {
                let out = scratch.join(path).join(label.replace([' ', '/'], "_"));
                let mut cancel = cancel.clone();
                runtime.block_on(extract(tools, input, &params, &out, &progress, &mut cancel))
            };
            let by_helper = run(&helper, "helper");
            let by_programs = run(&programs, "programs");
            match (&by_helper, &by_programs) {
                (Ok((_, helper_out)), Ok((_, program_out))) => {
                    assert_eq!(helper_out.track, program_out.track, "{label}");
                    assert_eq!(helper_out.output, program_out.output, "{label}");
                    let (helper_facts, helper_s, frame_s) = audio_facts(&helper_out.audio_path);
                    let (program_facts, program_s, _) = audio_facts(&program_out.audio_path);
                    assert_eq!(helper_facts, program_facts, "{label}");
                    assert!(
                        (helper_s - program_s).abs() <= frame_s,
                        "{label}: {helper_s} s by the helper, {program_s} s by the programs"
                    );
                }
                (Err(helper_error), Err(program_error)) => {
                    assert_eq!(
                        helper_error.class, program_error.class,
                        "{label}: {helper_error} / {program_error}"
                    );
                }
                _ => panic!("{label}: the helper gave {by_helper:?}, the programs {by_programs:?}"),
            }
            compared += 1;
        }
    }
    assert_eq!(compared, inputs.len() * param_sets().len());
}

// Guards "no program per job": with ffmpeg and ffprobe replaced by stand-ins that fail (and leave
// a mark), jobs of several codecs and both workflows still succeed through the helpers, and
// nothing ran the stand-ins.
#[test]
fn jobs_go_through_the_helpers_without_starting_a_program() {
    let home = Home::new();
    let tools = tempfile::tempdir().unwrap();
    let (ffmpeg_path, ffmpeg_mark) = failing_tool(tools.path(), "ffmpeg");
    let (ffprobe_path, ffprobe_mark) = failing_tool(tools.path(), "ffprobe");
    let inputs = tempfile::tempdir().unwrap();
    let corpus = corpus(inputs.path());
    let good: Vec<&str> = corpus[..8]
        .iter()
        .map(|path| path.to_str().unwrap())
        .collect();
    let env = [
        ("NARRA_FFMPEG", ffmpeg_path.to_str().unwrap()),
        ("NARRA_FFPROBE", ffprobe_path.to_str().unwrap()),
    ];
    for workflow in ["ingest", "asr"] {
        let mut args = vec![
            "ingest",
            "--workflow",
            workflow,
            "--concurrency",
            "2",
            "--json",
        ];
        args.extend(&good);
        let output = home.narra_env(&args, &env);
        assert_eq!(
            output.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let jobs: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        for job in jobs.as_array().unwrap() {
            assert_eq!(job["status"], "succeeded", "{job}");
        }
    }
    assert!(!ffmpeg_mark.exists(), "ffmpeg was started");
    assert!(!ffprobe_mark.exists(), "ffprobe was started");
}

/// A helper started by hand, spoken to as the worker speaks to it.
struct RawHelper {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
}

impl RawHelper {
    fn start(command: &mut Command, scratch_root: &Path) -> RawHelper {
        let limits = Limits::default();
        let mut child = command
            .arg(HELPER_ARG)
            .arg(scratch_root)
            .arg(limits.memory_bytes.to_string())
            .arg(limits.file_bytes.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the helper starts");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        RawHelper {
            child,
            stdin,
            stdout,
        }
    }

    fn ask(&mut self, request: &Request) -> Response {
        write_frame(&mut self.stdin, request).unwrap();
        loop {
            let response: Response = read_frame(&mut self.stdout).unwrap().expect("an answer");
            if response.is_final() {
                return response;
            }
        }
    }

    fn self_check(&mut self) -> SelfCheck {
        match self.ask(&Request::SelfCheck) {
            Response::SelfChecked(check) => check,
            other => panic!("a self-check was answered with {other:?}"),
        }
    }
}

impl Drop for RawHelper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn helper_command(disabled: &str) -> Command {
    let mut command = Command::new(narra_binary());
    command.env(DISABLE_ENV, disabled);
    command
}

// Guards the sandbox by trying it from inside: a helper cannot open /etc/passwd or create a socket,
// and still probes media in scratch. Each fallback runs too: without the network namespace the
// seccomp filter still refuses sockets; without seccomp a socket is created (so the filter is what
// refuses it); without Landlock the file opens; and what the helper reports matches what happened.
#[test]
fn the_helper_sandbox_refuses_files_outside_scratch_and_sockets_with_each_fallback() {
    let scratch = tempfile::tempdir().unwrap();
    let input = scratch.path().join("sample.mp4");
    std::fs::copy(sample_video(), &input).unwrap();

    let mut helper = RawHelper::start(&mut helper_command(""), scratch.path());
    let check = helper.self_check();
    assert!(check.read_etc_passwd.is_err(), "{check:?}");
    assert!(check.open_socket.is_err(), "{check:?}");
    assert_eq!(check.protections.landlock, "fully", "{check:?}");
    assert!(
        check.protections.seccomp_socket && check.protections.rlimits,
        "{check:?}"
    );
    match helper.ask(&Request::Probe {
        input: input.clone(),
    }) {
        Response::Probed { json } => assert!(json.contains("\"aac\""), "{json}"),
        other => panic!("the sample was not probed: {other:?}"),
    }

    let check = RawHelper::start(&mut helper_command("netns"), scratch.path()).self_check();
    assert!(!check.protections.network_namespace, "{check:?}");
    assert!(
        check.open_socket.is_err(),
        "seccomp alone refuses sockets: {check:?}"
    );

    let check = RawHelper::start(&mut helper_command("seccomp"), scratch.path()).self_check();
    assert!(!check.protections.seccomp_socket, "{check:?}");
    assert!(
        check.open_socket.is_ok(),
        "the filter is what refuses sockets: {check:?}"
    );
    assert!(check.read_etc_passwd.is_err(), "{check:?}");

    let check = RawHelper::start(&mut helper_command("landlock"), scratch.path()).self_check();
    assert_eq!(check.protections.landlock, "disabled", "{check:?}");
    assert!(
        check.read_etc_passwd.is_ok(),
        "Landlock is what refuses the file: {check:?}"
    );
    assert!(check.open_socket.is_err(), "{check:?}");
}

// Guards the sandbox for a helper run by a user other than root (the usual deployment): nobody's
// helper is refused the same file and sockets, and still reads media in scratch.
#[test]
fn the_sandbox_holds_for_a_helper_run_by_another_user() {
    let scratch = tempfile::tempdir().unwrap();
    std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let input = scratch.path().join("sample.mp4");
    std::fs::copy(sample_video(), &input).unwrap();
    std::fs::set_permissions(&input, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut command = Command::new("setpriv");
    command
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(narra_binary());
    let mut helper = RawHelper::start(&mut command, scratch.path());
    let check = helper.self_check();
    assert!(check.read_etc_passwd.is_err(), "{check:?}");
    assert!(check.open_socket.is_err(), "{check:?}");
    assert_eq!(check.protections.landlock, "fully", "{check:?}");
    match helper.ask(&Request::Probe { input }) {
        Response::Probed { json } => assert!(json.contains("\"aac\""), "{json}"),
        other => panic!("the sample was not probed: {other:?}"),
    }
}

// Guards crash attribution: an input that kills the helper (a failpoint inside it that fires on
// that input's tags, as a demuxer bug would) among good inputs fails only its own job, as
// media_crash naming the signal, after a second death; the worker survives and every other job
// succeeds.
#[test]
fn an_input_that_kills_the_helper_fails_only_its_own_job_as_media_crash() {
    let home = Home::new();
    let inputs = tempfile::tempdir().unwrap();
    let poison = inputs.path().join("poison.mp4");
    let mut args = vec!["-i", sample_video().to_str().unwrap()];
    args.extend(["-c", "copy", "-metadata", "title=narra-poison"]);
    ffmpeg(&args, &poison);
    let good_a = inputs.path().join("a.mp4");
    std::fs::copy(sample_video(), &good_a).unwrap();
    let good_b = inputs.path().join("b.mp4");
    ffmpeg(
        &[
            "-i",
            sample_video().to_str().unwrap(),
            "-c",
            "copy",
            "-metadata",
            "title=fine",
        ],
        &good_b,
    );
    let sources = [
        good_a.to_str().unwrap(),
        poison.to_str().unwrap(),
        good_b.to_str().unwrap(),
    ];

    let output = home.narra_env(
        &[
            "ingest",
            "--concurrency",
            "2",
            "--json",
            sources[0],
            sources[1],
            sources[2],
        ],
        &[("NARRA_FAILPOINT", "media.helper.probe%narra-poison")],
    );

    assert_eq!(
        output.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr
            .matches("failpoint fired: media.helper.probe")
            .count(),
        2,
        "{stderr}"
    );
    let jobs: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let jobs = jobs.as_array().unwrap();
    assert_eq!(jobs[0]["status"], "succeeded", "{}", jobs[0]);
    assert_eq!(jobs[2]["status"], "succeeded", "{}", jobs[2]);
    assert_eq!(jobs[1]["status"], "failed", "{}", jobs[1]);
    assert_eq!(jobs[1]["error"]["class"], "media_crash", "{}", jobs[1]);
    let message = jobs[1]["error"]["message"].as_str().unwrap();
    assert!(message.contains("SIGABRT"), "{message}");
    let show = home.show(&id_of(&jobs[1]));
    assert_eq!(show["attempts"], 1, "not retried: {show}");
}

// Guards the timeouts: a helper stuck reading a FIFO is killed at the probe timeout as
// extract_timeout (not a death, not media_crash), leaves no process behind, and the next request
// gets a fresh helper that answers.
#[test]
fn a_stuck_helper_is_killed_at_its_timeout_and_replaced() {
    let scratch = tempfile::tempdir().unwrap();
    let fifo = scratch.path().join("stuck.fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let input = scratch.path().join("sample.mp4");
    std::fs::copy(sample_video(), &input).unwrap();
    let tools = helper_tools(scratch.path());
    let Media::Helpers(pool) = &tools.media else {
        unreachable!()
    };
    let params = ExtractParams {
        probe_timeout_ms: 300,
        ..ExtractParams::default()
    };
    let runtime = runtime();
    let (_sender, mut cancel) = tokio::sync::watch::channel(false);

    let stuck = runtime.block_on(probe(&tools, &fifo, &params, &mut cancel));

    let error = stuck.expect_err("the FIFO never delivers");
    assert_eq!(error.class, ErrorClass::ExtractTimeout, "{error}");
    assert_eq!(pool.started(), 1);
    let fifo_name = fifo.to_str().unwrap().to_string();
    wait_until("no helper holds the FIFO open", || {
        !std::fs::read_dir("/proc").unwrap().flatten().any(|entry| {
            std::fs::read_dir(entry.path().join("fd")).is_ok_and(|fds| {
                fds.flatten().any(|fd| {
                    std::fs::read_link(fd.path())
                        .is_ok_and(|target| target.to_str() == Some(&fifo_name))
                })
            })
        })
    });
    let answered = runtime.block_on(probe(
        &tools,
        &input,
        &ExtractParams::default(),
        &mut cancel,
    ));
    assert!(answered.is_ok(), "{answered:?}");
    assert_eq!(pool.started(), 2, "a fresh helper answered");
    let again = runtime.block_on(probe(
        &tools,
        &input,
        &ExtractParams::default(),
        &mut cancel,
    ));
    assert!(again.is_ok());
    assert_eq!(pool.started(), 2, "and was reused");
}

// Guards switching paths: jobs ingested through the programs, then re-ingested through the
// helpers (and back) succeed and leave `audit` with no violation and `verify` clean: the path is
// not part of the definition hash, so each job keeps the checkpoints and record it has.
#[test]
fn switching_between_the_programs_and_the_helpers_keeps_audit_clean() {
    let home = Home::new();
    let inputs = tempfile::tempdir().unwrap();
    let corpus = corpus(inputs.path());
    let sources: Vec<&str> = corpus[..4]
        .iter()
        .map(|path| path.to_str().unwrap())
        .collect();
    for (media, reingest) in [("cli", false), ("helper", true), ("cli", true)] {
        let mut args = vec!["--json", "ingest"];
        if reingest {
            args.push("--reingest");
        }
        args.extend(&sources);
        let output = home.narra_env(&args, &[("NARRA_MEDIA", media)]);
        assert_eq!(output.status.code(), Some(0), "{media}: {output:?}");
        let jobs: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        for job in jobs.as_array().unwrap() {
            assert_eq!(job["status"], "succeeded", "{media}: {job}");
        }
    }
    let audit = home.json(&["audit"], 0);
    for job in audit.as_array().unwrap() {
        assert_eq!(job["violations"], 0, "{job}");
    }
    assert!(home.narra(&["verify"]).status.success());
}
