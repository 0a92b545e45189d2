//! Extraction and metadata that tell the truth: codec-aware stream copies, transcode targets, track
//! choice, output validation, error classes for broken inputs, ffmpeg hardening (playlists, stuck
//! processes), `reprobe` and `doctor`. Every input is generated with ffmpeg's test sources.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::sync::{Mutex, OnceLock};

use serde_json::Value;

use narra::engine::verify::metadata_record_bytes;
use narra::model::ErrorClass;
use narra::model::job::{Hash, JobId, Location, WorkerId};
use narra::steps::Progress;
use narra::steps::extract::{Tools, extract_audio, probe};
use narra::store::sled_store::DEFAULT_CACHE_CAPACITY_BYTES;
use narra::store::{JobReader, OrchestratorStore, SledStore, WorkerStore};
use narra::workflow::ExtractParams;

use super::fixture::{
    Home, Origin, TEST_VIDEO, X264, artifact, ffmpeg, file_snapshot, id_of, last_seq, sample_video,
    step_events_after, steps, wait_until,
};

/// How far an extracted audio's duration may be from its source stream's: 1 %, at least 0.2 s.
fn tolerance_s(source_s: f64) -> f64 {
    (source_s * 0.01).max(0.2)
}

fn corpus_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("a temp dir"))
        .path()
}

/// A file of the test corpus, generated once per run by `make` (which writes the given path).
fn corpus(name: &str, make: impl FnOnce(&Path)) -> PathBuf {
    static MADE: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let mut made = MADE.get_or_init(Default::default).lock().unwrap();
    made.entry(name.to_string())
        .or_insert_with(|| {
            let path = corpus_dir().join(name);
            make(&path);
            assert!(path.exists(), "{name} was generated");
            path
        })
        .clone()
}

/// A 1.5 s video with a sine tone, video and audio encoded as asked.
fn av(name: &str, video: &[&str], audio: &[&str], format: &[&str]) -> PathBuf {
    corpus(name, |path| {
        let mut args: Vec<&str> = TEST_VIDEO.to_vec();
        args.extend(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000"]);
        args.extend(["-t", "1.5"]);
        args.extend(video);
        args.extend(audio);
        args.extend(format);
        ffmpeg(&args, path);
    })
}

fn vp9_opus_webm() -> PathBuf {
    av(
        "vp9_opus.webm",
        &[
            "-c:v",
            "libvpx-vp9",
            "-deadline",
            "realtime",
            "-cpu-used",
            "8",
        ],
        &["-c:a", "libopus"],
        &[],
    )
}

fn mp3_mkv() -> PathBuf {
    av("mp3.mkv", &X264, &["-c:a", "libmp3lame"], &[])
}

fn ac3_avi() -> PathBuf {
    av("ac3.avi", &["-c:v", "mpeg4"], &["-c:a", "ac3"], &[])
}

fn aac_ts() -> PathBuf {
    av("aac.ts", &X264, &["-c:a", "aac"], &["-f", "mpegts"])
}

fn pcm_be_mov() -> PathBuf {
    av("pcm_be.mov", &X264, &["-c:a", "pcm_s16be"], &[])
}

fn video_only_mp4() -> PathBuf {
    corpus("video_only.mp4", |path| {
        let mut args: Vec<&str> = TEST_VIDEO.to_vec();
        args.extend(["-t", "1.5"]);
        args.extend(X264);
        ffmpeg(&args, path);
    })
}

/// A Matroska file with two audio tracks: AAC tagged `eng`, then MP3 tagged `fra`.
fn two_languages_mkv() -> PathBuf {
    corpus("two_languages.mkv", |path| {
        let mut args: Vec<&str> = TEST_VIDEO.to_vec();
        args.extend(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"]);
        args.extend(["-f", "lavfi", "-i", "sine=frequency=880:sample_rate=44100"]);
        args.extend(["-t", "1.5", "-map", "0:v", "-map", "1:a", "-map", "2:a"]);
        args.extend(X264);
        args.extend(["-c:a:0", "aac", "-c:a:1", "libmp3lame"]);
        args.extend(["-metadata:s:a:0", "language=eng"]);
        args.extend(["-metadata:s:a:1", "language=fra"]);
        ffmpeg(&args, path);
    })
}

/// A WAV file whose audio is in a codec no ffmpeg knows (format tag 0x3039).
fn unknown_codec_wav() -> PathBuf {
    corpus("unknown_codec.wav", |path| {
        let data = vec![0u8; 16_000];
        let mut format = Vec::new();
        format.extend(0x3039u16.to_le_bytes()); // the unknown codec
        format.extend(1u16.to_le_bytes()); // channels
        format.extend(8_000u32.to_le_bytes()); // sample rate
        format.extend(16_000u32.to_le_bytes()); // bytes per second
        format.extend(2u16.to_le_bytes()); // block align
        format.extend(16u16.to_le_bytes()); // bits per sample
        let mut body = b"WAVEfmt ".to_vec();
        body.extend(u32::try_from(format.len()).unwrap().to_le_bytes());
        body.extend(&format);
        body.extend(b"data");
        body.extend(u32::try_from(data.len()).unwrap().to_le_bytes());
        body.extend(&data);
        let mut file = b"RIFF".to_vec();
        file.extend(u32::try_from(body.len()).unwrap().to_le_bytes());
        file.extend(body);
        std::fs::write(path, file).expect("write the WAV");
    })
}

/// ffprobe's JSON for a file, as the tests read it (no narra code involved).
fn probe_json(path: &Path) -> Value {
    super::fixture::ffprobe(path)
}

fn streams(probe: &Value) -> &Vec<Value> {
    probe["streams"].as_array().expect("a streams list")
}

/// The duration of the first audio stream: its own, Matroska's `DURATION` tag, or the format's.
fn audio_duration(probe: &Value) -> f64 {
    let audio = streams(probe)
        .iter()
        .find(|stream| stream["codec_type"] == "audio")
        .unwrap_or_else(|| panic!("an audio stream in {probe}"));
    let from_tag = || {
        let tag = audio["tags"]["DURATION"].as_str()?;
        let mut parts = tag.split(':').map(|part| part.parse::<f64>().ok());
        Some(parts.next()?? * 3600.0 + parts.next()?? * 60.0 + parts.next()??)
    };
    audio["duration"]
        .as_str()
        .and_then(|text| text.parse().ok())
        .or_else(from_tag)
        .or_else(|| probe["format"]["duration"].as_str()?.parse().ok())
        .unwrap_or_else(|| panic!("a duration in {probe}"))
}

/// How long the first audio stream of a file really plays: the sum of its packets' durations. For
/// MPEG-TS this differs from ffprobe's stream duration, which is an estimate.
fn measured_audio_duration(path: &Path) -> f64 {
    let output = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "a:0"])
        .args(["-show_entries", "packet=duration_time", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .expect("ffprobe runs");
    assert!(output.status.success(), "packets of {}", path.display());
    String::from_utf8(output.stdout)
        .expect("UTF-8")
        .lines()
        .filter_map(|line| line.trim().trim_end_matches(',').parse::<f64>().ok())
        .sum()
}

/// ffmpeg's MD5 over every packet of a file's first audio stream, as demuxed: equal hashes mean
/// the packets are bit-identical, i.e. nothing was re-encoded.
fn audio_packets_md5(path: &Path) -> String {
    let output = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-i"])
        .arg(path)
        .args([
            "-map",
            "0:a:0",
            "-c",
            "copy",
            "-f",
            "streamhash",
            "-hash",
            "md5",
            "-",
        ])
        .output()
        .expect("ffmpeg runs");
    assert!(output.status.success(), "streamhash of {}", path.display());
    String::from_utf8(output.stdout)
        .expect("UTF-8")
        .trim()
        .to_string()
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

/// The stored audio of a succeeded job: its file, after checking it is audio only.
fn stored_audio(home: &Home, show: &Value) -> (PathBuf, Value) {
    let key = artifact(show, "audio")["key"].as_str().expect("a key");
    let path = home.object(key);
    let probe = probe_json(&path);
    let kinds: Vec<&str> = streams(&probe)
        .iter()
        .map(|stream| stream["codec_type"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(kinds, ["audio"], "{key} is audio only");
    (path, probe)
}

// Guards codec-aware extraction: each source's audio is stream-copied into the container of its
// codec (packets bit-identical), ADTS AAC from MPEG-TS goes to .m4a, and codecs with no clean
// container (ac3 in AVI, big-endian PCM from MOV) fall back to the workflow's target (FLAC).
#[test]
fn each_codec_lands_in_its_container_and_a_copy_re_encodes_nothing() {
    let home = Home::new();
    // (source, audio extension, audio codec, packets copied unchanged)
    let cases = [
        (sample_video().to_path_buf(), "m4a", "aac", true),
        (vp9_opus_webm(), "opus", "opus", true),
        (mp3_mkv(), "mp3", "mp3", true),
        (aac_ts(), "m4a", "aac", false),
        (ac3_avi(), "flac", "flac", false),
        (pcm_be_mov(), "flac", "flac", false),
    ];
    let sources: Vec<&str> = cases.iter().map(|case| path_str(&case.0)).collect();
    let mut args = vec!["ingest"];
    args.extend(&sources);

    let jobs = home.json(&args, 0);

    for (job, (source, extension, codec, copied)) in
        jobs.as_array().expect("a list of jobs").iter().zip(&cases)
    {
        let name = source.file_name().unwrap().to_string_lossy();
        assert_eq!(job["status"], "succeeded", "{name}: {job}");
        let show = home.show(&id_of(job));
        let key = artifact(&show, "audio")["key"].as_str().unwrap();
        assert!(key.ends_with(&format!(".{extension}")), "{name}: {key}");
        let (audio, probe) = stored_audio(&home, &show);
        assert_eq!(streams(&probe)[0]["codec_name"], *codec, "{name}");
        let expected = measured_audio_duration(source);
        let found = audio_duration(&probe);
        assert!(
            (expected - found).abs() <= tolerance_s(expected),
            "{name}: {found} s of audio from a {expected} s stream"
        );
        if *copied {
            assert_eq!(
                audio_packets_md5(&audio),
                audio_packets_md5(source),
                "{name}: a stream copy keeps every packet"
            );
        }
        let selected: Vec<&Value> = show["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|event| event["kind"] == "audio_selected")
            .collect();
        assert_eq!(selected.len(), 1, "{name}: the choice is recorded once");
        let mode = if *copied || *extension == "m4a" {
            "copy"
        } else {
            "flac"
        };
        assert_eq!(selected[0]["output"], mode, "{name}: {}", selected[0]);
        assert_eq!(selected[0]["container"], *extension);
    }
}

// Guards the shipped speech-recognition workflow: 16 kHz, mono, 16-bit FLAC.
#[test]
fn the_asr_workflow_yields_16_khz_mono_flac() {
    let home = Home::new();
    let source = sample_video();

    let job = home.one_job(&["ingest", "--workflow", "asr", path_str(source)], 0);

    assert_eq!(job["status"], "succeeded", "{job}");
    let show = home.show(&id_of(&job));
    assert_eq!(show["workflow"], "asr");
    let (_, probe) = stored_audio(&home, &show);
    let audio = &streams(&probe)[0];
    assert_eq!(probe["format"]["format_name"], "flac");
    assert_eq!(audio["codec_name"], "flac");
    assert_eq!(audio["sample_rate"], "16000");
    assert_eq!(audio["channels"], 1);
    assert_eq!(audio["sample_fmt"], "s16");
    let expected = measured_audio_duration(source);
    assert!((audio_duration(&probe) - expected).abs() <= tolerance_s(expected));
}

// Guards track selection: the first audio stream by default, the first one tagged with the
// workflow's preferred language otherwise, and the choice in the job's history either way.
#[test]
fn a_preferred_language_chooses_the_track_and_the_choice_is_recorded() {
    let home = Home::new();
    let workflows = home.dir.path().join("workflows");
    std::fs::create_dir_all(&workflows).unwrap();
    std::fs::write(
        workflows.join("french.toml"),
        "name = \"french\"\n[[steps]]\nkind = \"download\"\n[[steps]]\nkind = \"extract\"\n\
         params = { preferred_language = \"fra\" }\n[[steps]]\nkind = \"store\"\n",
    )
    .unwrap();
    let source = two_languages_mkv();
    let workflows = path_str(&workflows);

    let default = home.one_job(&["ingest", path_str(&source)], 0);
    let french = home.one_job(
        &[
            "--workflows",
            workflows,
            "ingest",
            "--workflow",
            "french",
            path_str(&source),
        ],
        0,
    );

    for (job, stream_index, codec, language, extension) in [
        (&default, 1, "aac", "eng", "m4a"),
        (&french, 2, "mp3", "fra", "mp3"),
    ] {
        let show = home.show(&id_of(job));
        let selected = show["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|event| event["kind"] == "audio_selected")
            .unwrap_or_else(|| panic!("an audio_selected event: {}", show["events"]));
        assert_eq!(selected["stream_index"], stream_index, "{selected}");
        assert_eq!(selected["codec"], codec);
        assert_eq!(selected["language"], language);
        assert_eq!(selected["output"], "copy");
        let key = artifact(&show, "audio")["key"].as_str().unwrap();
        assert!(key.ends_with(extension), "{key}");
        let (_, probe) = stored_audio(&home, &show);
        assert_eq!(streams(&probe)[0]["codec_name"], codec);
        let languages: Vec<&Value> = show["metadata"]["streams"]
            .as_array()
            .unwrap()
            .iter()
            .map(|stream| &stream["language"])
            .collect();
        assert_eq!(languages, [&Value::Null, &"eng".into(), &"fra".into()]);
    }
}

/// Every regular file under `dir` (none when it does not exist).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    if !dir.exists() {
        return Vec::new();
    }
    file_snapshot(dir).into_keys().collect()
}

/// 64 KiB of deterministic noise.
fn noise() -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..64 * 1024)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 56) as u8
        })
        .collect()
}

// Guards the error classes of broken inputs: each fails with its class and a message quoting what
// gave it away, is not retried, and leaves no audio or object behind. The truncated WebM is one
// ffmpeg itself "succeeds" on; only probing the output catches it.
#[test]
fn broken_inputs_fail_with_their_class_and_leave_nothing_behind() {
    let home = Home::new();
    let dir = home.dir.path();
    let half_mp4 = dir.join("half.mp4");
    let video = std::fs::read(sample_video()).unwrap();
    std::fs::write(&half_mp4, &video[..video.len() / 2]).unwrap();
    let noise_path = dir.join("noise.mp4");
    std::fs::write(&noise_path, noise()).unwrap();
    let empty = dir.join("empty.mp4");
    std::fs::write(&empty, b"").unwrap();
    let truncated_webm = dir.join("truncated.webm");
    let webm = std::fs::read(vp9_opus_webm()).unwrap();
    std::fs::write(&truncated_webm, &webm[..webm.len() / 2]).unwrap();
    // ffmpeg copies what it can of the truncated WebM and exits 0.
    let copied = dir.join("ffmpeg-alone.opus");
    let status = Command::new("ffmpeg")
        .args(["-nostdin", "-v", "quiet", "-y", "-i"])
        .arg(&truncated_webm)
        .args(["-map", "0:a:0", "-c", "copy"])
        .arg(&copied)
        .status()
        .expect("ffmpeg runs");
    assert!(status.success(), "ffmpeg exits 0 on the truncated WebM");
    let video_only = video_only_mp4();
    let unknown_codec = unknown_codec_wav();
    // (source, class, a fragment of the message)
    let cases = [
        (path_str(&video_only), "no_audio_stream", "no audio stream"),
        (path_str(&half_mp4), "corrupt_media", "moov atom not found"),
        (path_str(&noise_path), "corrupt_media", "Invalid data found"),
        (path_str(&empty), "corrupt_media", "empty"),
        (
            path_str(&truncated_webm),
            "corrupt_media",
            "the extracted audio lasts",
        ),
        (
            path_str(&unknown_codec),
            "unsupported_codec",
            "cannot decode",
        ),
    ];
    let mut args = vec!["ingest"];
    args.extend(cases.iter().map(|case| case.0));

    let jobs = home.json(&args, 1);

    for (job, (source, class, fragment)) in jobs.as_array().unwrap().iter().zip(&cases) {
        assert_eq!(job["status"], "failed", "{source}: {job}");
        assert_eq!(job["error"]["class"], *class, "{source}: {job}");
        let message = job["error"]["message"].as_str().unwrap();
        assert!(message.contains(fragment), "{source}: {message}");
        let show = home.show(&id_of(job));
        assert_eq!(show["attempts"], 1, "{source} was not retried");
        assert_eq!(show["artifacts"], serde_json::json!([]), "{source}");
    }
    assert_eq!(
        files_under(&home.objects().join("blobs")),
        Vec::<PathBuf>::new()
    );
    let leftover_audio: Vec<PathBuf> = files_under(&home.path().join("scratch"))
        .into_iter()
        .filter(|path| {
            path.file_name()
                .unwrap()
                .to_string_lossy()
                .contains("audio")
        })
        .collect();
    assert_eq!(
        leftover_audio,
        Vec::<PathBuf>::new(),
        "no audio, whole or partial"
    );
}

// Guards the demuxer whitelist: a "video" that is an HLS playlist (or a concat script) would make
// ffmpeg read the local file or the URL it lists; narra refuses it as unsupported_source, the URL
// is never requested, and the secret's bytes reach no file narra writes.
#[test]
fn playlists_are_refused_and_what_they_list_is_never_read() {
    let home = Home::new();
    let origin = Origin::start();
    let dir = home.dir.path();
    let secret = dir.join("secret.ts");
    ffmpeg(
        &[
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=1000:sample_rate=44100",
            "-t",
            "1",
            "-c:a",
            "aac",
            "-f",
            "mpegts",
        ],
        &secret,
    );
    let secret_bytes = std::fs::read(&secret).unwrap();
    origin.put("secret.ts", secret_bytes.clone());
    let playlist = |target: &str| {
        format!(
            "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:2\n#EXTINF:1.0,\n{target}\n\
             #EXT-X-ENDLIST\n"
        )
    };
    let local = dir.join("clip.mp4");
    std::fs::write(&local, playlist(path_str(&secret))).unwrap();
    let remote = dir.join("remote.mp4");
    std::fs::write(&remote, playlist(&origin.url("secret.ts"))).unwrap();
    let concat = dir.join("concat.mp4");
    std::fs::write(
        &concat,
        format!("ffconcat version 1.0\nfile {}\n", path_str(&secret)),
    )
    .unwrap();
    // Without narra's whitelist, ffprobe opens the playlist as hls and reads the secret.
    let unguarded = Command::new("ffprobe")
        .args(["-v", "quiet", "-print_format", "json", "-show_streams"])
        .args(["-protocol_whitelist", "file"])
        .arg(&local)
        .output()
        .expect("ffprobe runs");
    let unguarded: Value = serde_json::from_slice(&unguarded.stdout).unwrap();
    assert_eq!(
        unguarded["streams"][0]["codec_name"], "aac",
        "the threat is real: {unguarded}"
    );

    let jobs = home.json(
        &[
            "ingest",
            path_str(&local),
            path_str(&remote),
            path_str(&concat),
        ],
        1,
    );

    for job in jobs.as_array().unwrap() {
        assert_eq!(job["status"], "failed", "{job}");
        assert_eq!(job["error"]["class"], "unsupported_source", "{job}");
    }
    let message = jobs[0]["error"]["message"].as_str().unwrap();
    assert!(message.contains("hls"), "{message}");
    assert!(message.contains("not on whitelist"), "{message}");
    assert_eq!(
        origin.gets("secret.ts"),
        0,
        "the listed URL was never fetched"
    );
    let marker = &secret_bytes[secret_bytes.len() / 2..][..1024];
    for file in files_under(&home.path()) {
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !bytes.windows(marker.len()).any(|window| window == marker),
            "{} holds the secret's bytes",
            file.display()
        );
    }
}

/// A script that runs `tool` as its child (not by `exec`), so the process group holds two
/// processes and only a group kill stops both.
fn wrapper(dir: &Path, tool: &str) -> PathBuf {
    let path = dir.join(format!("{tool}-wrapper"));
    std::fs::write(&path, format!("#!/bin/sh\n{tool} \"$@\"\nexit $?\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Live (not zombie) processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let zombie = std::fs::read_to_string(entry.path().join("stat")).is_ok_and(|stat| {
            stat.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X']))
        });
        if !zombie && String::from_utf8_lossy(&cmdline).contains(needle) {
            found.push(format!("{name}: {}", String::from_utf8_lossy(&cmdline)));
        }
    }
    found
}

// Guards the timeouts: an ffprobe or ffmpeg stuck reading a FIFO that never delivers a byte is
// killed at its (tiny, configured) timeout as extract_timeout, with its whole process group, and
// leaves neither a process nor a partial audio file.
#[test]
fn a_stuck_ffprobe_or_ffmpeg_is_killed_at_its_timeout_with_no_process_left() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("stuck-input.fifo");
    let status = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(status.success());
    let tools = Tools {
        ffmpeg: wrapper(dir.path(), "ffmpeg"),
        ffprobe: wrapper(dir.path(), "ffprobe"),
        ..Tools::default()
    };
    let params = ExtractParams {
        probe_timeout_ms: 300,
        timeout_base_ms: 300,
        timeout_ms_per_media_s: 0,
        timeout_max_ms: 300,
        ..ExtractParams::default()
    };
    let scratch = dir.path().join("scratch");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (_sender, mut cancel) = tokio::sync::watch::channel(false);

    let (probed, extracted) = runtime.block_on(async {
        let probed = probe(&tools, &fifo, &params, &mut cancel).await;
        // The real sample is probed under the default timeout: the tiny one is for the stuck
        // tools only, and a loaded machine may take longer than it to probe real media.
        let metadata = probe(
            &Tools::default(),
            sample_video(),
            &ExtractParams::default(),
            &mut cancel,
        )
        .await
        .expect("the sample probes");
        let (progress, _) = tokio::sync::watch::channel(Progress::default());
        let extracted = extract_audio(
            &tools,
            &fifo,
            &metadata,
            &params,
            &scratch,
            &progress,
            &mut cancel,
        )
        .await;
        (probed, extracted)
    });

    for (what, result) in [
        ("ffprobe", probed.map(|_| ())),
        ("ffmpeg", extracted.map(|_| ())),
    ] {
        let error = result.expect_err(what);
        assert_eq!(error.class, ErrorClass::ExtractTimeout, "{what}: {error}");
        assert!(error.message.contains(what), "{error}");
    }
    let fifo_name = fifo.to_str().unwrap();
    wait_until("no process reads the FIFO any more", || {
        processes_mentioning(fifo_name).is_empty()
    });
    assert_eq!(
        files_under(&scratch),
        Vec::<PathBuf>::new(),
        "no partial audio"
    );
}

// Guards `reprobe`, the runbook's "metadata looks incorrect": a wrong but self-consistent record
// (as an older narra or a faulty ffprobe would have written and stored it) is re-derived from the
// stored original, the changes are recorded, the corrected record is stored again, and nothing
// else is rewritten: the video and audio objects stay as they were and the next reingest finds
// every step done.
#[test]
fn reprobe_corrects_a_wrong_record_and_stores_it_without_redoing_anything_else() {
    let home = Home::new();
    let source = path_str(sample_video());
    let job = home.one_job(&["ingest", source], 0);
    let id = id_of(&job);
    let first = home.show(&id);
    let right_metadata_key = artifact(&first, "metadata")["key"].clone();
    write_a_wrong_record(&home, &id);
    home.one_job(&["ingest", "--reingest", source], 0);
    let wrong = home.show(&id);
    assert_eq!(wrong["metadata"]["streams"][1]["codec_name"], "mp3");
    assert_ne!(artifact(&wrong, "metadata")["key"], right_metadata_key);
    let media_keys: Vec<PathBuf> = ["video", "audio"]
        .iter()
        .map(|kind| home.object(artifact(&wrong, kind)["key"].as_str().unwrap()))
        .collect();
    let media_before: Vec<_> = media_keys
        .iter()
        .map(|path| file_snapshot(path.parent().unwrap()))
        .collect();

    let reprobed = home.json(&["reprobe", &id], 0);

    let changes: Vec<&str> = reprobed["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|change| change.as_str().unwrap())
        .collect();
    assert!(
        changes.contains(&"streams[1].codec_name: \"mp3\" -> \"aac\""),
        "{changes:?}"
    );
    assert!(
        changes.contains(&"streams[1].sample_rate: 22050 -> 44100"),
        "{changes:?}"
    );
    assert_eq!(reprobed["republished"], true);
    assert_eq!(reprobed["job"]["status"], "succeeded");
    let show = home.show(&id);
    assert_eq!(show["metadata"]["streams"][1]["codec_name"], "aac");
    let event = show["events"]
        .as_array()
        .unwrap()
        .iter()
        .rfind(|event| event["kind"] == "reprobed")
        .expect("a reprobed event");
    assert_eq!(event["changes"], reprobed["changes"]);
    assert_eq!(artifact(&show, "metadata")["key"], right_metadata_key);
    let media_after: Vec<_> = media_keys
        .iter()
        .map(|path| file_snapshot(path.parent().unwrap()))
        .collect();
    assert_eq!(
        media_before, media_after,
        "video and audio objects were not rewritten"
    );
    let manifest = home.object(&format!("jobs/{id}/manifest.json"));
    let manifest: Value = serde_json::from_slice(&std::fs::read(manifest).unwrap()).unwrap();
    assert_eq!(manifest["metadata"]["streams"][1]["codec_name"], "aac");
    assert_eq!(home.json(&["verify", &id], 0)[0]["ok"], true);
    let seq = last_seq(&show);
    home.one_job(&["ingest", "--reingest", source], 0);
    assert_eq!(
        step_events_after(&home.show(&id), seq),
        steps(&[
            ("step_skipped", "download"),
            ("step_skipped", "extract"),
            ("step_skipped", "store"),
        ]),
        "after a reprobe every step verifies"
    );

    let again = home.json(&["reprobe", &id], 0);

    assert_eq!(again["changes"], serde_json::json!([]));
    assert_eq!(again["republished"], false);
    let last = home.show(&id)["events"]
        .as_array()
        .unwrap()
        .last()
        .cloned()
        .unwrap();
    assert_eq!(last["kind"], "reprobed");
    assert_eq!(last["changes"], serde_json::json!([]));
}

/// Rewrites job `id`'s metadata record the way a worker records it, but wrong (the audio stream
/// claimed to be 22.05 kHz MP3), keeping the extract checkpoint consistent with it.
fn write_a_wrong_record(home: &Home, id: &str) {
    let id = JobId::from_str(id).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = SledStore::open(&home.path().join("state"), DEFAULT_CACHE_CAPACITY_BYTES)
            .expect("open the state store");
        store.reingest(id).await.unwrap().expect("reingest");
        let (_, token) = store
            .claim(id, &WorkerId("an older narra".into()), 60_000)
            .await
            .unwrap()
            .expect("claim");
        let mut metadata = store.metadata(id).await.unwrap().expect("a record");
        let audio = &mut metadata.streams[1];
        assert_eq!(audio.codec_type, "audio");
        audio.codec_name = Some("mp3".into());
        audio.sample_rate = Some(22_050);
        let record = metadata_record_bytes(&metadata);
        let mut checkpoint = store.checkpoint(id, "extract").await.unwrap().unwrap();
        for output in &mut checkpoint.outputs {
            if output.location == Location::State {
                output.size = u64::try_from(record.len()).unwrap();
                output.blake3 = Hash::of(&record);
            }
        }
        store
            .record_checkpoint(&token, &checkpoint, Some(&metadata))
            .await
            .unwrap()
            .expect("record");
        store.complete(&token).await.unwrap().expect("complete");
    });
}

// Guards reprobe's refusal: a job whose extraction never completed has no record to re-derive.
#[test]
fn reprobe_refuses_a_job_without_a_metadata_record() {
    let home = Home::new();
    let noise_path = home.dir.path().join("noise.mp4");
    std::fs::write(&noise_path, noise()).unwrap();
    let job = home.one_job(&["ingest", path_str(&noise_path)], 1);

    let output = home.narra(&["reprobe", &id_of(&job)]);

    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no metadata record"), "{stderr}");
}

fn doctor(home: &Home, args: &[&str], env: &[(&str, &str)], expected_code: i32) -> Value {
    let mut full = vec!["--json", "doctor"];
    full.extend(args);
    let output = home.narra_env(&full, env);
    assert_eq!(
        output.status.code(),
        Some(expected_code),
        "doctor {args:?} {env:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("doctor prints JSON")
}

fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|check| check["name"] == name)
        .unwrap_or_else(|| panic!("a {name} check in {report}"))
}

// Guards `doctor`: every check passes on a working setup (a fresh home included, which doctor
// does not create), each problem fails its own check and the exit code, the configured ffmpeg is
// the one checked, and a home held by a running worker is reported, not fought over.
#[test]
fn doctor_reports_tools_store_storage_and_scratch_and_fails_on_any_problem() {
    let home = Home::new();

    let fresh = doctor(&home, &[], &[], 0);

    assert_eq!(fresh["ok"], true, "{fresh}");
    for name in [
        "ffmpeg",
        "ffprobe",
        "workflows",
        "encoders",
        "state_store",
        "storage",
        "scratch",
    ] {
        assert_eq!(check(&fresh, name)["ok"], true, "{fresh}");
    }
    assert!(
        check(&fresh, "ffmpeg")["detail"]
            .as_str()
            .unwrap()
            .contains("ffmpeg version")
    );
    assert!(!home.path().exists(), "doctor created no home");

    home.one_job(&["ingest", path_str(sample_video())], 0);
    let used = doctor(&home, &[], &[], 0);
    let state = check(&used, "state_store")["detail"].as_str().unwrap();
    assert!(
        state.contains("consistent") && state.contains("1 succeeded"),
        "{state}"
    );

    let wrapped = wrapper(home.dir.path(), "ffmpeg");
    let configured = doctor(&home, &[], &[("NARRA_FFMPEG", path_str(&wrapped))], 0);
    let detail = check(&configured, "ffmpeg")["detail"].as_str().unwrap();
    assert!(detail.contains(path_str(&wrapped)), "{detail}");

    let missing = doctor(&home, &[], &[("NARRA_FFPROBE", "/nonexistent/ffprobe")], 1);
    assert_eq!(missing["ok"], false);
    assert_eq!(check(&missing, "ffprobe")["ok"], false, "{missing}");
    assert_eq!(
        check(&missing, "ffmpeg")["ok"],
        true,
        "the other checks still run"
    );

    let full_disk = doctor(&home, &["--scratch-min-free-mb", "1000000000000"], &[], 1);
    assert_eq!(check(&full_disk, "scratch")["ok"], false, "{full_disk}");

    let mut worker = home.spawn(&["worker"]);
    let pid = worker.id().to_string();
    wait_until("the worker holds the home", || {
        assert!(worker.has_exited().is_none(), "the worker runs");
        std::fs::read_to_string(home.lock_file()).is_ok_and(|text| text.trim() == pid)
    });
    let busy = doctor(&home, &[], &[], 0);
    let state = check(&busy, "state_store")["detail"].as_str().unwrap();
    assert!(state.contains("in use") && state.contains(&pid), "{state}");
    worker.interrupt_and_wait();
}

// Guards against orphans: ffprobe and ffmpeg run in their own process group (out of reach of the
// terminal's Ctrl-C), so when narra itself is killed they must die with it instead of writing on
// into scratch.
#[test]
fn a_killed_narra_leaves_no_ffprobe_behind() {
    let home = super::fixture::Home::new();
    let tools = tempfile::tempdir().unwrap();
    let pid_file = tools.path().join("ffprobe.pid");
    let wrapper = tools.path().join("ffprobe");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho $$ > {}.tmp && mv {}.tmp {}\nexec sleep 600\n",
            pid_file.display(),
            pid_file.display(),
            pid_file.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let source = super::fixture::sample_video().to_str().unwrap().to_string();
    let child = home
        .command(&["ingest", &source])
        .env("NARRA_FFPROBE", &wrapper)
        // The programs' path: the media helpers start no ffprobe.
        .env("NARRA_MEDIA", "cli")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("narra starts");
    let mut narra = super::fixture::ChildGuard::from_child(child);
    super::fixture::wait_until("the stand-in ffprobe is running", || pid_file.exists());
    let pid = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .to_string();
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "ffprobe {pid} runs"
    );

    narra.kill();

    super::fixture::wait_until("the orphaned ffprobe is gone", || {
        // A zombie (state Z) is gone for our purposes: it no longer runs.
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => stat.split_whitespace().nth(2) == Some("Z"),
            Err(_) => true,
        }
    });
}
