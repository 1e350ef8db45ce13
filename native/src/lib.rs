//! One-pass tokenizer of Light-OAuth2 logback lines for `batch/loader.py` (`batch._native`).
//!
//! Why it exists: the Polars path of the loader runs one string expression per step (split into
//! lines, the LINE_REGEX head replace, the field cut, the stack join), so every byte of a batch is
//! scanned five to ten times.  This walks every line once: it decides the line kind exactly as
//! `shared.parsing.LINE_REGEX` does (event / blank / malformed / continuation), cuts the event's
//! fields at the positions the regex's groups would take, attaches continuation lines to the
//! event before them, applies the start-up trim, resolves the date from the run epoch, and writes
//! the columns straight into Arrow buffers (offsets + data + validity) that Python wraps with
//! `pyarrow.Array.from_buffers` without copying.
//!
//! The matcher below is a hand-written equivalent of
//! `^(time) \[(thread)\] +(cid NS*) +(LEVEL) +(logger NS+) +(method NS+) - (message .*)$`
//! with leftmost-first (backtracking) group semantics; `tests/unit/test_loader_native.py` proves
//! it equal to the Polars path and to `shared.parsing.parse_line` on the real sample and on
//! generated lines (bad bytes, CRs, runs of spaces, level words as correlation ids, ...).

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;

const MS_PER_DAY: i64 = 86_400_000;
const HALF_DAY_MS: i64 = MS_PER_DAY / 2;
const LEVELS: [&[u8]; 6] = [b"TRACE", b"DEBUG", b"INFO", b"WARN", b"ERROR", b"FATAL"];
/// `ev_no` cut-off that means "no traffic event": the whole file is start-up output.
const NO_TRAFFIC: u32 = (1u32 << 31) - 1;

/// An owned, immutable byte buffer that Python wraps with `pyarrow.foreign_buffer(address, nbytes, base=self)`.
#[pyclass(frozen, module = "batch._native")]
struct Buffer {
    storage: Storage,
}

enum Storage {
    U8(Vec<u8>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

#[pymethods]
impl Buffer {
    /// Address of the first byte (valid while this object lives).
    fn address(&self) -> usize {
        match &self.storage {
            Storage::U8(v) => v.as_ptr() as usize,
            Storage::I32(v) => v.as_ptr() as usize,
            Storage::I64(v) => v.as_ptr() as usize,
            Storage::F64(v) => v.as_ptr() as usize,
        }
    }

    /// Size in bytes.
    fn nbytes(&self) -> usize {
        match &self.storage {
            Storage::U8(v) => v.len(),
            Storage::I32(v) => v.len() * 4,
            Storage::I64(v) => v.len() * 8,
            Storage::F64(v) => v.len() * 8,
        }
    }
}

/// (validity or None, offsets, data) of a large_string array.
type StrBuffers = (Option<Py<Buffer>>, Py<Buffer>, Py<Buffer>);

/// A large_string column under construction (64-bit offsets, optional validity bitmap).
struct StrCol {
    data: Vec<u8>,
    offsets: Vec<i64>,
    validity: Option<Vec<u8>>,
    len: usize,
    nulls: usize,
}

impl StrCol {
    fn new(nullable: bool, rows: usize, bytes: usize) -> Self {
        let mut offsets = Vec::with_capacity(rows + 1);
        offsets.push(0);
        StrCol {
            data: Vec::with_capacity(bytes),
            offsets,
            validity: if nullable { Some(Vec::with_capacity(rows / 8 + 1)) } else { None },
            len: 0,
            nulls: 0,
        }
    }

    #[inline]
    fn set_valid(&mut self, valid: bool) {
        if let Some(bits) = self.validity.as_mut() {
            if self.len.is_multiple_of(8) {
                bits.push(0);
            }
            if valid {
                *bits.last_mut().unwrap() |= 1 << (self.len % 8);
            }
        }
    }

    #[inline]
    fn push(&mut self, s: &[u8]) {
        self.set_valid(true);
        self.data.extend_from_slice(s);
        self.offsets.push(self.data.len() as i64);
        self.len += 1;
    }

    #[inline]
    fn push_null(&mut self) {
        self.set_valid(false);
        self.offsets.push(self.data.len() as i64);
        self.len += 1;
        self.nulls += 1;
    }

    /// (validity or None, offsets, data) as Python objects.
    fn into_py(self, py: Python<'_>) -> PyResult<StrBuffers> {
        let validity = match self.validity {
            Some(bits) if self.nulls > 0 => Some(Py::new(py, Buffer { storage: Storage::U8(bits) })?),
            _ => None,
        };
        Ok((
            validity,
            Py::new(py, Buffer { storage: Storage::I64(self.offsets) })?,
            Py::new(py, Buffer { storage: Storage::U8(self.data) })?,
        ))
    }
}

/// A boolean column under construction (Arrow bit-packed values, LSB first).
struct BoolCol {
    bits: Vec<u8>,
    len: usize,
}

impl BoolCol {
    fn new(rows: usize) -> Self {
        BoolCol { bits: Vec::with_capacity(rows / 8 + 1), len: 0 }
    }

    #[inline]
    fn push(&mut self, v: bool) {
        if self.len.is_multiple_of(8) {
            self.bits.push(0);
        }
        if v {
            *self.bits.last_mut().unwrap() |= 1 << (self.len % 8);
        }
        self.len += 1;
    }
}

/// The per-file columns of the events contract, repeated on every event of the file.
struct FileCols {
    run: Vec<String>,
    test_case: Vec<String>,
    service: Vec<String>,
    seq_id: Vec<String>,
    epoch: Vec<i64>,
    anomaly: Vec<bool>,
    anomaly_service: Vec<bool>,
}

#[inline]
fn is_ws(b: u8) -> bool {
    // shared.parsing: the six characters of BLANK_CHARS / the regex's NS class complement.
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

#[inline]
fn spaces(l: &[u8], mut i: usize) -> usize {
    let start = i;
    while i < l.len() && l[i] == b' ' {
        i += 1;
    }
    i - start
}

#[inline]
fn non_ws_end(l: &[u8], mut i: usize) -> usize {
    while i < l.len() && !is_ws(l[i]) {
        i += 1;
    }
    i
}

/// `^[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}` (TIME_PREFIX_REGEX).
#[inline]
fn time_prefix(l: &[u8]) -> bool {
    if l.len() < 12 {
        return false;
    }
    let d = |i: usize| l[i].is_ascii_digit();
    d(0) && d(1) && l[2] == b':' && d(3) && d(4) && l[5] == b':' && d(6) && d(7) && l[8] == b'.' && d(9) && d(10) && d(11)
}

/// The time of a `time_prefix` line is a clock time: `(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]`
/// (shared.parsing.TIME_OF_DAY_REGEX).  A line with an impossible time is malformed, not an event.
#[inline]
fn time_in_range(l: &[u8]) -> bool {
    (l[0] < b'2' || (l[0] == b'2' && l[1] <= b'3')) && l[3] <= b'5' && l[6] <= b'5'
}

#[inline]
fn time_of_day_ms(l: &[u8]) -> i64 {
    let n = |i: usize| (l[i] - b'0') as i64;
    (n(0) * 10 + n(1)) * 3_600_000 + (n(3) * 10 + n(4)) * 60_000 + (n(6) * 10 + n(7)) * 1000 + n(9) * 100 + n(10) * 10 + n(11)
}

/// shared.parsing.resolve_timestamp_ms: the calendar day that puts the time closest to the reference.
#[inline]
fn resolve_ms(tod: i64, reference_ms: i64) -> i64 {
    let cand = reference_ms - reference_ms.rem_euclid(MS_PER_DAY) + tod;
    let diff = cand - reference_ms;
    if diff > HALF_DAY_MS {
        cand - MS_PER_DAY
    } else if diff < -HALF_DAY_MS {
        cand + MS_PER_DAY
    } else {
        cand
    }
}

type Span = (usize, usize);

/// The groups of one event line (spans into the line), as LINE_REGEX would capture them.
struct Fields {
    thread: Span,
    cid: Span,
    level: Span,
    logger: Span,
    method: Span,
    message: Span,
}

/// `(LEVEL) +(logger NS+) +(method NS+) - (message .*)$` from `p`: every quantifier here has only
/// one way to succeed (a shorter non-space run would be followed by a non-space), so no backtracking.
fn parse_rest(l: &[u8], p: usize) -> Option<(Span, Span, Span, Span)> {
    let rest = &l[p..];
    let lv = LEVELS.iter().find(|w| rest.starts_with(w))?;
    let le = p + lv.len();
    let s1 = spaces(l, le);
    if s1 == 0 {
        return None;
    }
    let g0 = le + s1;
    let g1 = non_ws_end(l, g0);
    if g1 == g0 {
        return None;
    }
    let s2 = spaces(l, g1);
    if s2 == 0 {
        return None;
    }
    let m0 = g1 + s2;
    let m1 = non_ws_end(l, m0);
    if m1 == m0 || !l[m1..].starts_with(b" - ") {
        return None;
    }
    Some(((p, le), (g0, g1), (m0, m1), (m1 + 3, l.len())))
}

/// LINE_REGEX on one line (no `\n`, trailing `\r`s already stripped).
fn parse_event(l: &[u8]) -> Option<Fields> {
    if !time_prefix(l) || !time_in_range(l) || l.len() < 14 || l[12] != b' ' || l[13] != b'[' {
        return None;
    }
    // `\[([^\]]*)\]`: the thread runs to the first `]`.
    let close = 14 + memchr::memchr(b']', &l[14..])?;
    let pos = close + 1;
    let n1 = spaces(l, pos);
    if n1 == 0 {
        return None;
    }
    let p = pos + n1;
    // ` +(cid NS*) +`: first (greedy) the whole non-space run after the spaces as the id ...
    let r = non_ws_end(l, p);
    if r > p {
        let s = spaces(l, r);
        if s > 0 {
            if let Some((level, logger, method, message)) = parse_rest(l, r + s) {
                return Some(Fields { thread: (14, close), cid: (p, r), level, logger, method, message });
            }
        }
    }
    // ... then an empty id between two runs of spaces (needs at least two of them).
    if n1 >= 2 {
        if let Some((level, logger, method, message)) = parse_rest(l, p) {
            return Some(Fields { thread: (14, close), cid: (p, p), level, logger, method, message });
        }
    }
    None
}

/// One event of the file being processed (spans are absolute offsets into the file's text).
struct Ev {
    line_no: u32,
    tod: i64,
    f: Fields,
    /// continuation lines: `conts[c0..c1]`
    c0: usize,
    c1: usize,
    /// physical lines it owns: itself, its continuation, blank and malformed lines
    owned: u32,
}

#[derive(Clone, Copy, PartialEq)]
enum Trim {
    None,
    Lines(u32),
    Startup,
}

struct Cfg {
    trim: Trim,
    traffic_prefixes: Vec<Vec<u8>>,
    traffic_infixes: Vec<Vec<u8>>,
    main_thread: Vec<u8>,
    max_examples: usize,
}

impl Cfg {
    fn is_traffic(&self, thread: &[u8]) -> bool {
        self.traffic_prefixes.iter().any(|p| thread.starts_with(p))
            || self.traffic_infixes.iter().any(|i| memchr::memmem::find(thread, i).is_some())
    }
}

/// Per-file counters (FileStats in batch/loader.py) and the sequence row.
#[derive(Default)]
struct PerFile {
    lines: Vec<i64>,
    blank: Vec<i64>,
    events: Vec<i64>,
    continuation: Vec<i64>,
    orphan: Vec<i64>,
    malformed: Vec<i64>,
    undecodable: Vec<i64>,
    first_undecodable: Vec<i64>,
    events_trimmed: Vec<i64>,
    lines_trimmed: Vec<i64>,
    events_written: Vec<i64>,
}

/// (fid, line_no, kind: "malformed" | "orphan_continuation", text) of a bad line.
type Example = (usize, u32, &'static str, String);

/// ``sequences.parquet`` rows: one per file with at least one event written.
struct SeqOut {
    run: StrCol,
    run_epoch: Vec<i64>,
    test_case: StrCol,
    service: StrCol,
    seq_id: StrCol,
    n_events: Vec<i32>,
    n_stack_lines: Vec<i32>,
    start: Vec<i64>,
    end: Vec<i64>,
    duration_s: Vec<f64>,
    anomaly: BoolCol,
    anomaly_service: BoolCol,
}

impl SeqOut {
    fn new(files: usize) -> Self {
        SeqOut {
            run: StrCol::new(false, files, files * 24),
            run_epoch: Vec::with_capacity(files),
            test_case: StrCol::new(false, files, files * 40),
            service: StrCol::new(false, files, files * 8),
            seq_id: StrCol::new(false, files, files * 16),
            n_events: Vec::with_capacity(files),
            n_stack_lines: Vec::with_capacity(files),
            start: Vec::with_capacity(files),
            end: Vec::with_capacity(files),
            duration_s: Vec::with_capacity(files),
            anomaly: BoolCol::new(files),
            anomaly_service: BoolCol::new(files),
        }
    }
}

struct Out {
    seq: SeqOut,
    run: StrCol,
    run_epoch: Vec<i64>,
    test_case: StrCol,
    service: StrCol,
    seq_id: StrCol,
    anomaly: BoolCol,
    anomaly_service: BoolCol,
    line_no: Vec<i32>,
    timestamp: Vec<i64>,
    n_stack: Vec<i32>,
    thread: StrCol,
    cid: StrCol,
    level: StrCol,
    logger: StrCol,
    method: StrCol,
    message: StrCol,
    stack: StrCol,
    per_file: PerFile,
    examples: Vec<Example>,
}

/// UTF-8 text of a file: bad bytes become U+FFFD, one per byte (Python's surrogateescape +
/// replacement in `batch.loader.decode_lines`); also the distinct 1-based lines that held them.
fn repair_utf8(data: &[u8]) -> (Vec<u8>, Vec<u32>) {
    let mut out = Vec::with_capacity(data.len() + 64);
    let mut bad_lines: Vec<u32> = Vec::new();
    let mut rest = data;
    let mut line: u32 = 1;
    loop {
        match std::str::from_utf8(rest) {
            Ok(_) => {
                out.extend_from_slice(rest);
                break;
            }
            Err(e) => {
                let good = e.valid_up_to();
                out.extend_from_slice(&rest[..good]);
                line += memchr::memchr_iter(b'\n', &rest[..good]).count() as u32;
                let n_bad = e.error_len().unwrap_or(rest.len() - good);
                for _ in 0..n_bad {
                    out.extend_from_slice("\u{FFFD}".as_bytes());
                }
                if bad_lines.last() != Some(&line) {
                    bad_lines.push(line);
                }
                rest = &rest[good + n_bad..];
            }
        }
    }
    (out, bad_lines)
}

fn note(out: &mut Out, max: usize, fid: usize, line_no: u32, kind: &'static str, line: &[u8]) {
    if out.examples.len() < max {
        out.examples.push((fid, line_no, kind, String::from_utf8_lossy(line).into_owned()));
    }
}

fn process_file(data: &[u8], fid: usize, meta: &FileCols, cfg: &Cfg, out: &mut Out, evs: &mut Vec<Ev>, conts: &mut Vec<Span>) {
    let epoch_s = meta.epoch[fid];
    let repaired;
    let (text, bad_lines): (&[u8], Vec<u32>) = if std::str::from_utf8(data).is_ok() {
        (data, Vec::new())
    } else {
        let (t, b) = repair_utf8(data);
        repaired = t;
        (&repaired[..], b)
    };
    evs.clear();
    conts.clear();
    let (mut lines, mut blank, mut cont, mut orphan, mut malformed) = (0u32, 0i64, 0i64, 0i64, 0i64);
    if !text.is_empty() {
        // Empty files have no lines; one trailing newline does not start another line.
        let body = text.strip_suffix(b"\n").unwrap_or(text);
        let mut start = 0usize;
        for nl in memchr::memchr_iter(b'\n', body).chain(std::iter::once(body.len())) {
            let mut end = nl;
            while end > start && text[end - 1] == b'\r' {
                end -= 1;
            }
            let l = &text[start..end];
            lines += 1;
            let line_no = lines;
            if let Some(f) = parse_event(l) {
                let shift = |s: Span| (s.0 + start, s.1 + start);
                evs.push(Ev {
                    line_no,
                    tod: time_of_day_ms(l),
                    f: Fields {
                        thread: shift(f.thread),
                        cid: shift(f.cid),
                        level: shift(f.level),
                        logger: shift(f.logger),
                        method: shift(f.method),
                        message: shift(f.message),
                    },
                    c0: conts.len(),
                    c1: conts.len(),
                    owned: 1,
                });
            } else if l.iter().all(|&b| is_ws(b)) {
                blank += 1;
                if let Some(ev) = evs.last_mut() {
                    ev.owned += 1;
                }
            } else if time_prefix(l) {
                malformed += 1;
                note(out, cfg.max_examples, fid, line_no, "malformed", l);
                if let Some(ev) = evs.last_mut() {
                    ev.owned += 1;
                }
            } else if let Some(ev) = evs.last_mut() {
                cont += 1;
                ev.owned += 1;
                conts.push((start, end));
                ev.c1 = conts.len();
            } else {
                orphan += 1;
                note(out, cfg.max_examples, fid, line_no, "orphan_continuation", l);
            }
            start = nl + 1;
        }
    }

    // Trim: which events go, and how many physical lines with them.
    let (first_kept, lines_trimmed): (usize, i64) = match cfg.trim {
        Trim::None => (0, 0),
        Trim::Lines(n) => {
            let k = (n as usize).min(evs.len());
            (k, evs[..k].iter().map(|e| e.owned as i64).sum())
        }
        Trim::Startup => {
            // shared.startup.startup_block_events: the events before the first traffic event, when
            // an event on the start-up thread is among them; lines before that event go with them.
            let first_traffic = evs.iter().position(|e| cfg.is_traffic(&text[e.f.thread.0..e.f.thread.1]));
            let head = first_traffic.unwrap_or(evs.len());
            let has_main = evs[..head].iter().any(|e| text[e.f.thread.0..e.f.thread.1] == cfg.main_thread[..]);
            if head > 0 && has_main {
                let cut = first_traffic.map_or(NO_TRAFFIC, |i| evs[i].line_no);
                (head, (cut as i64 - 1).min(lines as i64))
            } else {
                (0, 0)
            }
        }
    };

    let mut stack_written = 0i64;
    let (mut t_min, mut t_max) = (i64::MAX, i64::MIN);
    let reference_ms = epoch_s * 1000;
    for ev in &evs[first_kept..] {
        let ts = resolve_ms(ev.tod, reference_ms);
        t_min = t_min.min(ts);
        t_max = t_max.max(ts);
        out.run.push(meta.run[fid].as_bytes());
        out.run_epoch.push(epoch_s);
        out.test_case.push(meta.test_case[fid].as_bytes());
        out.service.push(meta.service[fid].as_bytes());
        out.seq_id.push(meta.seq_id[fid].as_bytes());
        out.anomaly.push(meta.anomaly[fid]);
        out.anomaly_service.push(meta.anomaly_service[fid]);
        out.line_no.push(ev.line_no as i32);
        out.timestamp.push(ts);
        let f = &ev.f;
        out.thread.push(&text[f.thread.0..f.thread.1]);
        if f.cid.1 > f.cid.0 {
            out.cid.push(&text[f.cid.0..f.cid.1]);
        } else {
            out.cid.push_null();
        }
        out.level.push(&text[f.level.0..f.level.1]);
        out.logger.push(&text[f.logger.0..f.logger.1]);
        out.method.push(&text[f.method.0..f.method.1]);
        out.message.push(&text[f.message.0..f.message.1]);
        let n_stack = ev.c1 - ev.c0;
        if n_stack == 0 {
            out.stack.push_null();
        } else {
            out.stack.set_valid(true);
            for (k, &(a, b)) in conts[ev.c0..ev.c1].iter().enumerate() {
                if k > 0 {
                    out.stack.data.push(b'\n');
                }
                out.stack.data.extend_from_slice(&text[a..b]);
            }
            out.stack.offsets.push(out.stack.data.len() as i64);
            out.stack.len += 1;
        }
        out.n_stack.push(n_stack as i32);
        stack_written += n_stack as i64;
    }
    let written = (evs.len() - first_kept) as i64;
    let pf = &mut out.per_file;
    pf.lines.push(lines as i64);
    pf.blank.push(blank);
    pf.events.push(evs.len() as i64);
    pf.continuation.push(cont);
    pf.orphan.push(orphan);
    pf.malformed.push(malformed);
    pf.undecodable.push(bad_lines.len() as i64);
    pf.first_undecodable.push(bad_lines.first().map_or(0, |&l| l as i64));
    pf.events_trimmed.push(first_kept as i64);
    pf.lines_trimmed.push(lines_trimmed);
    pf.events_written.push(written);
    if written > 0 {
        let sq = &mut out.seq;
        sq.run.push(meta.run[fid].as_bytes());
        sq.run_epoch.push(epoch_s);
        sq.test_case.push(meta.test_case[fid].as_bytes());
        sq.service.push(meta.service[fid].as_bytes());
        sq.seq_id.push(meta.seq_id[fid].as_bytes());
        sq.n_events.push(written as i32);
        sq.n_stack_lines.push(stack_written as i32);
        sq.start.push(t_min);
        sq.end.push(t_max);
        sq.duration_s.push((t_max - t_min) as f64 / 1000.0);
        sq.anomaly.push(meta.anomaly[fid]);
        sq.anomaly_service.push(meta.anomaly_service[fid]);
    }
}

/// Parse the raw bytes of several service logs (one batch) in one pass per line.
///
/// ``files`` = (run, run_epoch in seconds, test_case, service, seq_id, anomaly, anomaly_service) per
/// file: the per-file columns, repeated on each event (the date is resolved from the run epoch).
/// Returns a dict: ``n`` (events written), the event columns ``run_epoch``, ``line_no``,
/// ``timestamp`` (ms), ``n_stack_lines`` as Buffers, ``anomaly``/``anomaly_service`` as bitmap
/// Buffers, and ``run``, ``test_case``, ``service``, ``seq_id``, ``thread``, ``correlation_id``,
/// ``level``, ``logger``, ``method``, ``message``, ``stack`` as ``(validity | None, offsets, data)``
/// Buffer triples of large_string arrays; ``sequences``: the sequences.parquet columns the same way
/// (one row per file with events written); ``files``: per-file counter lists; ``examples``: the
/// first ``max_examples`` malformed / orphan lines.
#[pyfunction]
#[pyo3(signature = (datas, files, trim_mode, trim_init_lines, traffic_prefixes, traffic_infixes, main_thread, max_examples))]
#[allow(clippy::too_many_arguments)]
fn parse_batch<'py>(
    py: Python<'py>,
    datas: Vec<PyBackedBytes>,
    files: Vec<(String, i64, String, String, String, bool, bool)>,
    trim_mode: &str,
    trim_init_lines: u32,
    traffic_prefixes: Vec<String>,
    traffic_infixes: Vec<String>,
    main_thread: String,
    max_examples: usize,
) -> PyResult<Bound<'py, pyo3::types::PyDict>> {
    if datas.len() != files.len() {
        return Err(PyValueError::new_err(format!("{} file contents but {} file descriptions", datas.len(), files.len())));
    }
    let mut meta = FileCols {
        run: Vec::with_capacity(files.len()),
        test_case: Vec::with_capacity(files.len()),
        service: Vec::with_capacity(files.len()),
        seq_id: Vec::with_capacity(files.len()),
        epoch: Vec::with_capacity(files.len()),
        anomaly: Vec::with_capacity(files.len()),
        anomaly_service: Vec::with_capacity(files.len()),
    };
    for (run, epoch, test_case, service, seq_id, anomaly, anomaly_service) in files {
        meta.run.push(run);
        meta.epoch.push(epoch);
        meta.test_case.push(test_case);
        meta.service.push(service);
        meta.seq_id.push(seq_id);
        meta.anomaly.push(anomaly);
        meta.anomaly_service.push(anomaly_service);
    }
    let trim = match trim_mode {
        "none" => Trim::None,
        "lines" if trim_init_lines == 0 => Trim::None,
        "lines" => Trim::Lines(trim_init_lines),
        "startup" => Trim::Startup,
        other => return Err(PyValueError::new_err(format!("trim_mode={other:?}: expected startup, lines or none"))),
    };
    let cfg = Cfg {
        trim,
        traffic_prefixes: traffic_prefixes.into_iter().map(String::into_bytes).collect(),
        traffic_infixes: traffic_infixes.into_iter().map(String::into_bytes).collect(),
        main_thread: main_thread.into_bytes(),
        max_examples,
    };
    let total: usize = datas.iter().map(|d| d.len()).sum();
    // ~150 bytes per LO2 line: capacity guesses that spare most regrowth without overshooting much.
    let rows = total / 150 + 16;
    let out = py.detach(|| {
        let mut out = Out {
            seq: SeqOut::new(datas.len()),
            run: StrCol::new(false, rows, rows * 24),
            run_epoch: Vec::with_capacity(rows),
            test_case: StrCol::new(false, rows, rows * 40),
            service: StrCol::new(false, rows, rows * 8),
            seq_id: StrCol::new(false, rows, rows * 16),
            anomaly: BoolCol::new(rows),
            anomaly_service: BoolCol::new(rows),
            line_no: Vec::with_capacity(rows),
            timestamp: Vec::with_capacity(rows),
            n_stack: Vec::with_capacity(rows),
            thread: StrCol::new(false, rows, rows * 16),
            cid: StrCol::new(true, rows, rows * 22),
            level: StrCol::new(false, rows, rows * 5),
            logger: StrCol::new(false, rows, rows * 32),
            method: StrCol::new(false, rows, rows * 12),
            message: StrCol::new(false, rows, total / 2),
            stack: StrCol::new(true, rows, 0),
            per_file: PerFile::default(),
            examples: Vec::new(),
        };
        let mut evs: Vec<Ev> = Vec::with_capacity(4096);
        let mut conts: Vec<Span> = Vec::with_capacity(1024);
        for (fid, data) in datas.iter().enumerate() {
            process_file(data, fid, &meta, &cfg, &mut out, &mut evs, &mut conts);
        }
        out
    });
    let d = pyo3::types::PyDict::new(py);
    d.set_item("n", out.line_no.len())?;
    d.set_item("run_epoch", Py::new(py, Buffer { storage: Storage::I64(out.run_epoch) })?)?;
    d.set_item("anomaly", Py::new(py, Buffer { storage: Storage::U8(out.anomaly.bits) })?)?;
    d.set_item("anomaly_service", Py::new(py, Buffer { storage: Storage::U8(out.anomaly_service.bits) })?)?;
    d.set_item("line_no", Py::new(py, Buffer { storage: Storage::I32(out.line_no) })?)?;
    d.set_item("timestamp", Py::new(py, Buffer { storage: Storage::I64(out.timestamp) })?)?;
    d.set_item("n_stack_lines", Py::new(py, Buffer { storage: Storage::I32(out.n_stack) })?)?;
    let cols: [(&str, StrCol); 11] = [
        ("run", out.run),
        ("test_case", out.test_case),
        ("service", out.service),
        ("seq_id", out.seq_id),
        ("thread", out.thread),
        ("correlation_id", out.cid),
        ("level", out.level),
        ("logger", out.logger),
        ("method", out.method),
        ("message", out.message),
        ("stack", out.stack),
    ];
    for (name, col) in cols {
        let bufs: StrBuffers = col.into_py(py)?;
        d.set_item(name, bufs)?;
    }
    let pf = out.per_file;
    let files = pyo3::types::PyDict::new(py);
    files.set_item("lines", pf.lines)?;
    files.set_item("blank_lines", pf.blank)?;
    files.set_item("events", pf.events)?;
    files.set_item("continuation_lines", pf.continuation)?;
    files.set_item("orphan_continuation_lines", pf.orphan)?;
    files.set_item("malformed_lines", pf.malformed)?;
    files.set_item("undecodable_lines", pf.undecodable)?;
    files.set_item("first_undecodable_line", pf.first_undecodable)?;
    files.set_item("events_trimmed", pf.events_trimmed)?;
    files.set_item("lines_trimmed", pf.lines_trimmed)?;
    files.set_item("events_written", pf.events_written)?;
    d.set_item("files", files)?;
    let sq = out.seq;
    let seq = pyo3::types::PyDict::new(py);
    seq.set_item("n", sq.n_events.len())?;
    seq.set_item("run_epoch", Py::new(py, Buffer { storage: Storage::I64(sq.run_epoch) })?)?;
    seq.set_item("n_events", Py::new(py, Buffer { storage: Storage::I32(sq.n_events) })?)?;
    seq.set_item("n_stack_lines", Py::new(py, Buffer { storage: Storage::I32(sq.n_stack_lines) })?)?;
    seq.set_item("start", Py::new(py, Buffer { storage: Storage::I64(sq.start) })?)?;
    seq.set_item("end", Py::new(py, Buffer { storage: Storage::I64(sq.end) })?)?;
    seq.set_item("duration_s", Py::new(py, Buffer { storage: Storage::F64(sq.duration_s) })?)?;
    seq.set_item("anomaly", Py::new(py, Buffer { storage: Storage::U8(sq.anomaly.bits) })?)?;
    seq.set_item("anomaly_service", Py::new(py, Buffer { storage: Storage::U8(sq.anomaly_service.bits) })?)?;
    for (name, col) in [("run", sq.run), ("test_case", sq.test_case), ("service", sq.service), ("seq_id", sq.seq_id)] {
        let bufs: StrBuffers = col.into_py(py)?;
        seq.set_item(name, bufs)?;
    }
    d.set_item("sequences", seq)?;
    d.set_item("examples", out.examples)?;
    Ok(d)
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Buffer>()?;
    m.add_function(wrap_pyfunction!(parse_batch, m)?)?;
    m.add("VERSION", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
