#!/usr/bin/env node
// Plays one live stream in headless Chromium (playwright-core, the system's chromium) with
// player.html for a fixed time and prints a JSON summary: startup, stalls, stall seconds, live
// latency p50/p95, player errors, and the media requests the page made (by kind, status and the
// protocol that carried them).
//
//   node play.mjs --engine hls|dash --url <stream URL> --page <http://host:port/player.html>
//                 [--seconds 30] [--out raw.json] [--label name] [--live-delay s]
//                 [--catchup 0|1] [--low-latency 0|1] [--warmup 5] [--max-stalls N]
//                 [--max-latency-p95 s] [--max-fatal-errors N] [--chromium /usr/bin/chromium]
//                 [--ignore-https-errors] [--force-quic HOST:PORT] [--spki-hash BASE64]
//                 [--verbose] [--debug]
//
// HTTPS (browsers speak HTTP/2 only over TLS, HTTP/3 only over QUIC):
//   --ignore-https-errors  the page accepts any certificate (playwright's ignoreHTTPSErrors):
//                          an https:// --url with a self-signed certificate, over h2 (QUIC stays
//                          off, so an Alt-Svc header does not move the player to HTTP/3).
//   --force-quic HOST:PORT Chromium without --disable-quic and with
//                          --origin-to-force-quic-on=HOST:PORT: every request to that origin
//                          goes over HTTP/3 from the first one (no TCP, no Alt-Svc needed).
//   --spki-hash BASE64     --ignore-certificate-errors-spki-list=BASE64: trust a certificate by
//                          its key (base64 of SHA-256 of the DER SubjectPublicKeyInfo); QUIC
//                          needs this, ignoreHTTPSErrors does not reach it.
// Each request to the stream's origin records the protocol Chromium reports for its response
// (CDP Network.responseReceived: `http/1.1`, `h2`, `h3`); the summary counts them per kind
// (`requests.<kind>.protocol`) and in all (`protocols.network`), next to what the page itself
// sees in Resource Timing (`protocols.resourceTiming`: nextHopProtocol, visible across origins
// because segd sends Timing-Allow-Origin) and the Alt-Svc values segd sent (`protocols.altSvc`).
//
// Exit status: 0 the stream played and met the thresholds given; 1 it did not (the summary's
// `reasons` say why); 2 usage; 3 the harness itself failed (browser did not start, page did not
// load, hard timeout). The browser is closed on every path, also on SIGTERM/SIGINT.
import { writeFileSync } from 'node:fs';
import { chromium } from 'playwright-core';

const ARGS = {
  engine: null,
  url: null,
  page: null,
  seconds: 30,
  out: null,
  label: null,
  'live-delay': null,
  catchup: '1',
  'low-latency': '1',
  warmup: 5,
  'max-stalls': null,
  'max-latency-p95': null,
  'max-fatal-errors': null,
  chromium: process.env.CHROMIUM || '/usr/bin/chromium',
  'ignore-https-errors': false,
  'force-quic': null,
  'spki-hash': null,
  verbose: false,
  debug: false,
};
const FLAGS = new Set(['verbose', 'debug', 'ignore-https-errors']);

function usage(msg) {
  if (msg) console.error(`play.mjs: ${msg}`);
  console.error('usage: node play.mjs --engine hls|dash --url URL --page PAGE_URL [--seconds 30] [--out FILE] ...');
  process.exit(2);
}

const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i++) {
  const a = argv[i];
  if (!a.startsWith('--')) usage(`unexpected argument ${a}`);
  const k = a.slice(2);
  if (!(k in ARGS)) usage(`unknown option ${a}`);
  if (FLAGS.has(k)) ARGS[k] = true;
  else {
    if (i + 1 >= argv.length) usage(`${a} needs a value`);
    ARGS[k] = argv[++i];
  }
}
if (!ARGS.url || !ARGS.page) usage('--url and --page are required');
if (!ARGS.engine) ARGS.engine = /\.mpd(\?|$)/.test(ARGS.url) ? 'dash' : 'hls';
if (!['hls', 'dash'].includes(ARGS.engine)) usage('--engine must be hls or dash');
const seconds = Number(ARGS.seconds);
const warmup = Number(ARGS.warmup);
if (!(seconds > 0) || !(warmup >= 0)) usage('--seconds must be > 0, --warmup >= 0');
const label = ARGS.label || ARGS.engine;
if (ARGS['force-quic'] !== null && !/^[^\s:\/]+:\d+$/.test(ARGS['force-quic'])) usage('--force-quic must be HOST:PORT');
if (ARGS['spki-hash'] !== null && !/^[A-Za-z0-9+\/]{43}=$/.test(ARGS['spki-hash'])) {
  usage('--spki-hash must be base64 of a SHA-256 (44 characters)');
}

const LAUNCH_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  // QUIC off unless --force-quic: a TLS origin's Alt-Svc would otherwise move requests to HTTP/3.
  ...(ARGS['force-quic'] === null ? ['--disable-quic'] : ['--enable-quic', `--origin-to-force-quic-on=${ARGS['force-quic']}`]),
  ...(ARGS['spki-hash'] === null ? [] : [`--ignore-certificate-errors-spki-list=${ARGS['spki-hash']}`]),
  '--no-first-run',
  '--disable-background-networking',
  '--autoplay-policy=no-user-gesture-required',
  // This machine's network is closed: no component updates or sync attempts at start.
  '--disable-component-update',
  '--disable-sync',
  // Keep timers and media running at full speed although nobody looks at the page.
  '--disable-background-timer-throttling',
  '--disable-renderer-backgrounding',
  '--disable-backgrounding-occluded-windows',
];

let browser = null;
let finished = false;

async function closeBrowser() {
  if (!browser) return;
  const b = browser;
  browser = null;
  const proc = b.process ? b.process() : null;
  try {
    await Promise.race([b.close(), new Promise((r) => setTimeout(r, 5000))]);
  } catch {
    /* fall through to the kill */
  }
  if (proc && proc.exitCode === null && proc.signalCode === null) {
    try {
      proc.kill('SIGKILL');
    } catch {
      /* already gone */
    }
  }
}

async function bail(code, msg) {
  if (finished) return;
  finished = true;
  console.error(`play.mjs [${label}]: ${msg}`);
  await closeBrowser();
  process.exit(code);
}

for (const sig of ['SIGTERM', 'SIGINT', 'SIGHUP']) {
  process.on(sig, () => bail(3, `${sig}: stopping`));
}
// Hard limit on the whole run: startup of the browser and page, the play time, collection.
const hardMs = (seconds + 90) * 1000;
setTimeout(() => bail(3, `hard timeout after ${hardMs / 1000} s`), hardMs).unref();

// --- network log -----------------------------------------------------------------------------

const mediaOrigin = new URL(ARGS.url).origin;
const requests = [];
const byReq = new Map();
// Protocol of each response from the media origin, by URL in arrival order (CDP), and the
// Alt-Svc values seen; attached to `requests` when the run ends.
const protocolsByUrl = new Map();
const preflights = {};
const altSvc = new Set();
let tGoto = null;
const rel = () => (tGoto === null ? 0 : Date.now() - tGoto);

function classify(u) {
  const url = new URL(u);
  if (url.origin !== mediaOrigin) return url.pathname === '/time' ? 'time' : 'page';
  const p = url.pathname.toLowerCase();
  if (/\.(m3u8|mpd)$/.test(p)) return 'playlist';
  if (/(^|\/)init[^/]*\.(m4s|mp4)$/.test(p)) return 'init';
  if (/\.(ts|m4s|mp4|m4a|aac|cmfa|cmfv|mp3|vtt|webvtt)$/.test(p)) return 'segment';
  return 'other';
}

// The token path segment is long and the same in every URL: leave it out of the log.
function shortUrl(u) {
  const url = new URL(u);
  return url.pathname.replace(/\/__token__=[^/]*/, '/__token__=…') + url.search;
}

function durationMs(req) {
  const t = req.timing();
  return t && t.responseEnd >= 0 ? Math.round(t.responseEnd) : null;
}

// Chromium's own record of the protocol (playwright does not expose it): a CDP session of the
// page's own. Preflights (none expected: the players send simple GETs) are counted apart.
async function trackProtocols(page) {
  const cdp = await page.context().newCDPSession(page);
  cdp.on('Network.responseReceived', (e) => {
    const u = e.response.url;
    let origin;
    try {
      origin = new URL(u).origin;
    } catch {
      return;
    }
    if (origin !== mediaOrigin) return;
    const proto = e.response.protocol || 'unknown';
    if (e.type === 'Preflight') {
      preflights[proto] = (preflights[proto] || 0) + 1;
      return;
    }
    const q = protocolsByUrl.get(u) || [];
    q.push(proto);
    protocolsByUrl.set(u, q);
  });
  await cdp.send('Network.enable');
}

// Each answered request gets the protocol of the next response CDP saw for its URL.
function attachProtocols() {
  for (const r of requests) {
    if (r.status === null) continue;
    const q = protocolsByUrl.get(r.fullUrl);
    r.protocol = q && q.length ? q.shift() : 'unknown';
  }
  for (const r of requests) delete r.fullUrl;
}

function track(page) {
  page.on('request', (req) => {
    const cls = classify(req.url());
    if (cls === 'page') return;
    const r = { t: rel(), cls, method: req.method(), url: shortUrl(req.url()), fullUrl: req.url(), status: null, ms: null, failure: null, state: 'pending' };
    requests.push(r);
    byReq.set(req, r);
  });
  page.on('response', (res) => {
    const r = byReq.get(res.request());
    if (r) {
      r.status = res.status();
      const h = res.headers();
      if (h['cache-control']) r.cacheControl = h['cache-control'];
      if (h['alt-svc']) altSvc.add(h['alt-svc']);
    }
  });
  page.on('requestfinished', (req) => {
    const r = byReq.get(req);
    if (!r) return;
    r.state = 'done';
    r.ms = durationMs(req);
    byReq.delete(req);
  });
  page.on('requestfailed', (req) => {
    const r = byReq.get(req);
    if (!r) return;
    r.state = 'failed';
    r.failure = req.failure() ? req.failure().errorText : 'failed';
    r.ms = rel() - r.t;
    byReq.delete(req);
  });
}

// --- summary ---------------------------------------------------------------------------------

function pct(sorted, p) {
  if (!sorted.length) return null;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i];
}
const r3 = (x) => (x === null || x === undefined ? null : Math.round(x * 1000) / 1000);

function requestSummary() {
  const out = {};
  for (const r of requests) {
    const c = (out[r.cls] ||= { n: 0, status: {}, protocol: {}, failed: 0, pending: 0, ms: [] });
    c.n++;
    if (r.state === 'failed') c.failed++;
    else if (r.state === 'pending') c.pending++;
    if (r.status !== null) c.status[r.status] = (c.status[r.status] || 0) + 1;
    if (r.protocol) c.protocol[r.protocol] = (c.protocol[r.protocol] || 0) + 1;
    if (r.state === 'done' && r.ms !== null && r.status >= 200 && r.status < 300) c.ms.push(r.ms);
  }
  for (const c of Object.values(out)) {
    const s = c.ms.sort((a, b) => a - b);
    c.p50Ms = pct(s, 50);
    c.p95Ms = pct(s, 95);
    c.maxMs = s.length ? s[s.length - 1] : null;
    delete c.ms;
  }
  const blocking = requests.filter((r) => r.cls === 'playlist' && /[?&]_HLS_msn=/.test(r.url));
  if (blocking.length) {
    const s = blocking.filter((r) => r.ms !== null).map((r) => r.ms).sort((a, b) => a - b);
    out.blockingReloads = { n: blocking.length, p50Ms: pct(s, 50), p95Ms: pct(s, 95), maxMs: s.length ? s[s.length - 1] : null };
  }
  return out;
}

// Protocols of the requests to the media origin: Chromium's (network), the page's Resource
// Timing (null when it could not be read), preflights, Alt-Svc values.
function protocolSummary(timing) {
  const network = {};
  const firstByProtocol = {};
  requests.forEach((r, i) => {
    if (!r.protocol) return;
    network[r.protocol] = (network[r.protocol] || 0) + 1;
    if (!(r.protocol in firstByProtocol)) firstByProtocol[r.protocol] = i;
  });
  return {
    network,
    // Index (in request order) of the first request over each protocol: a browser that needs a
    // TCP request before it moves to HTTP/3 shows `h2: 0, h3: 1`.
    firstByProtocol,
    resourceTiming: timing,
    preflight: preflights,
    altSvc: [...altSvc],
  };
}

function summarize(stats, browserVersion, timing) {
  const reasons = [];
  const started = stats && stats.firstPlayingMs !== null;
  const startMs = started ? stats.firstPlayingMs : null;
  const samples = started
    ? stats.latency.filter((s) => s.latency !== null && s.t >= startMs + warmup * 1000).map((s) => s.latency)
    : [];
  const sorted = [...samples].sort((a, b) => a - b);
  const targets = started ? stats.latency.filter((s) => s.target !== null).map((s) => s.target).sort((a, b) => a - b) : [];
  const lat = {
    samples: sorted.length,
    warmupSeconds: warmup,
    p50: r3(pct(sorted, 50)),
    p95: r3(pct(sorted, 95)),
    min: r3(sorted.length ? sorted[0] : null),
    max: r3(sorted.length ? sorted[sorted.length - 1] : null),
    mean: r3(sorted.length ? sorted.reduce((a, b) => a + b, 0) / sorted.length : null),
    target: r3(pct(targets, 50)),
  };
  if (!stats) reasons.push('no stats from the page');
  else {
    if (!started) reasons.push(`never started playing in ${seconds} s`);
    if (stats.gaveUp) reasons.push(`player gave up: ${stats.gaveUp}`);
    const window = seconds - (started ? startMs / 1000 : seconds);
    if (started && stats.playedSeconds < 0.5 * window) {
      reasons.push(`played ${stats.playedSeconds.toFixed(1)} s of ${window.toFixed(1)} s after the start`);
    }
    if (ARGS['max-stalls'] !== null && stats.stalls > Number(ARGS['max-stalls'])) {
      reasons.push(`${stats.stalls} stalls > ${ARGS['max-stalls']}`);
    }
    if (ARGS['max-latency-p95'] !== null && (lat.p95 === null || lat.p95 > Number(ARGS['max-latency-p95']))) {
      reasons.push(`latency p95 ${lat.p95} s > ${ARGS['max-latency-p95']} s`);
    }
    if (ARGS['max-fatal-errors'] !== null && stats.fatalErrors > Number(ARGS['max-fatal-errors'])) {
      reasons.push(`${stats.fatalErrors} fatal player errors > ${ARGS['max-fatal-errors']}`);
    }
  }
  return {
    label,
    engine: ARGS.engine,
    engineVersion: stats ? stats.engineVersion : null,
    browser: browserVersion,
    url: shortUrl(ARGS.url),
    seconds,
    ok: reasons.length === 0,
    reasons,
    startupSeconds: started ? r3(startMs / 1000) : null,
    playedSeconds: stats ? r3(stats.playedSeconds) : null,
    stalls: stats ? stats.stalls : null,
    stallSeconds: stats ? r3(stats.stallMs / 1000) : null,
    seekStalls: stats ? stats.seekStalls : null,
    frozenSeconds: stats ? r3(stats.frozenSeconds) : null,
    seeks: stats ? stats.seeks : null,
    latency: lat,
    lowLatencyMode: stats ? stats.lowLatencyMode : null,
    errors: stats
      ? { fatal: stats.fatalErrors, nonFatal: stats.nonFatalErrors, recoveries: stats.recoveries, byKind: stats.errorCounts }
      : null,
    requests: requestSummary(),
    protocols: protocolSummary(timing),
    engineInfo: stats ? stats.engineInfo : null,
    settings: stats ? stats.engineConfig : null,
  };
}

// --- run -------------------------------------------------------------------------------------

async function main() {
  try {
    browser = await chromium.launch({ executablePath: ARGS.chromium, args: LAUNCH_ARGS, headless: true, timeout: 30000 });
  } catch (e) {
    return bail(3, `cannot start ${ARGS.chromium}: ${e.message}`);
  }
  const browserVersion = browser.version();
  const page = await browser.newPage({ ignoreHTTPSErrors: ARGS['ignore-https-errors'] });
  // Room for every request of a long run in the page's Resource Timing buffer (default 250).
  await page.addInitScript(() => performance.setResourceTimingBufferSize(100000));
  const consoleErrors = [];
  page.on('console', (m) => {
    if (ARGS.verbose) console.error(`[${label}] ${m.text()}`);
    if (m.type() === 'error' && consoleErrors.length < 50) consoleErrors.push(m.text());
  });
  page.on('pageerror', (e) => {
    if (consoleErrors.length < 50) consoleErrors.push(`pageerror: ${e.message}`);
  });
  page.on('crash', () => bail(3, 'page crashed'));
  track(page);
  try {
    await trackProtocols(page);
  } catch (e) {
    return bail(3, `CDP session: ${e.message}`);
  }

  const q = new URLSearchParams({ engine: ARGS.engine, src: ARGS.url, catchup: ARGS.catchup, lowLatency: ARGS['low-latency'] });
  if (ARGS['live-delay'] !== null && ARGS['live-delay'] !== '') q.set('liveDelay', ARGS['live-delay']);
  if (ARGS.debug) q.set('debug', '1');
  const pageUrl = `${ARGS.page}?${q}`;
  tGoto = Date.now();
  try {
    await page.goto(pageUrl, { waitUntil: 'load', timeout: 15000 });
    await page.waitForFunction(() => typeof window.segdStats === 'function', null, { timeout: 10000 });
  } catch (e) {
    return bail(3, `page ${ARGS.page} did not load: ${e.message}`);
  }

  const endAt = tGoto + seconds * 1000;
  let lastLog = 0;
  while (Date.now() < endAt && !finished) {
    await new Promise((r) => setTimeout(r, Math.min(1000, Math.max(0, endAt - Date.now()))));
    if (ARGS.verbose && Date.now() - lastLog >= 5000) {
      lastLog = Date.now();
      const s = await page.evaluate(() => window.segdStats()).catch(() => null);
      const l = s && s.latency.length ? s.latency[s.latency.length - 1] : null;
      console.error(`[${label}] t=${Math.round(rel() / 1000)}s playing=${s && s.firstPlayingMs !== null} latency=${l && l.latency} stalls=${s && s.stalls} errors=${s && s.fatalErrors}/${s && s.nonFatalErrors}`);
    }
  }
  if (finished) return;

  let stats = null;
  try {
    stats = await Promise.race([
      page.evaluate(() => window.segdStats()),
      new Promise((_, rej) => setTimeout(() => rej(new Error('segdStats() timed out')), 10000)),
    ]);
  } catch (e) {
    consoleErrors.push(`collect: ${e.message}`);
  }
  // nextHopProtocol of the page's resource entries from the media origin, by protocol ('' when
  // the origin sent no Timing-Allow-Origin).
  let timing = null;
  try {
    timing = await Promise.race([
      page.evaluate((origin) => {
        const out = {};
        for (const e of performance.getEntriesByType('resource')) {
          if (new URL(e.name).origin !== origin) continue;
          const p = e.nextHopProtocol || '';
          out[p] = (out[p] || 0) + 1;
        }
        return out;
      }, mediaOrigin),
      new Promise((_, rej) => setTimeout(() => rej(new Error('resource timing timed out')), 10000)),
    ]);
  } catch (e) {
    consoleErrors.push(`resource timing: ${e.message}`);
  }
  await closeBrowser();
  attachProtocols();
  const summary = summarize(stats, browserVersion, timing);
  summary.consoleErrors = consoleErrors.length;
  if (ARGS.out) {
    writeFileSync(ARGS.out, JSON.stringify({ summary, stats, consoleErrors, requests }, null, 1) + '\n');
  }
  console.log(JSON.stringify(summary, null, 2));
  finished = true;
  process.exit(summary.ok ? 0 : 1);
}

main().catch((e) => bail(3, `harness error: ${e.stack || e}`));
