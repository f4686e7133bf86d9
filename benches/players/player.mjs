// Live player for the segd player harness: plays one live HLS (hls.js, lowLatencyMode) or DASH
// (dash.js, low-latency settings, catch-up on) stream and keeps stats that play.mjs collects with
// window.segdStats():
//   - startup: ms from page start to the first `playing`
//   - stalls: `waiting` events after the first `playing` (rebuffers), with the time until the next
//     `playing`; waits caused by a seek (the player jumping to the live edge) are counted apart
//   - frozenSeconds: seconds in which the playhead did not move although the video was not paused
//     (independent of events: catches a stall a player does not report)
//   - errors: the player's error events (fatal ones and the rest), the media element's errors
//   - latency: sampled every second after the first `playing` (hls.js `hls.latency`, dash.js
//     `getCurrentLiveLatency()`), with the player's target, the buffer ahead and playback rate
// Query: ?engine=hls|dash&src=<URL>[&liveDelay=<s>][&catchup=0|1][&lowLatency=0|1][&debug=1]

/* global Hls, dashjs */
const q = new URLSearchParams(location.search);
const engine = q.get('engine') || (/\.mpd(\?|$)/.test(q.get('src') || '') ? 'dash' : 'hls');
const src = q.get('src');
const liveDelay = q.has('liveDelay') && q.get('liveDelay') !== '' ? Number(q.get('liveDelay')) : null;
const catchup = q.get('catchup') !== '0';
const lowLatency = q.get('lowLatency') !== '0';
const debug = q.get('debug') === '1';

const video = document.getElementById('v');
const logEl = document.getElementById('log');
const t0 = performance.now();
const now = () => performance.now() - t0;

const MAX_EVENTS = 400;
const MAX_ERRORS = 200;
const S = {
  engine,
  engineVersion: null,
  src,
  settings: { liveDelay, catchup, lowLatency },
  userAgent: navigator.userAgent,
  firstPlayingMs: null,
  playingEvents: 0,
  stalls: 0,
  seekStalls: 0,
  stallMs: 0,
  stallStart: null,
  stallStartSeek: false,
  stallList: [],
  stalledEvents: 0,
  seeks: 0,
  frozenSeconds: 0,
  playedSeconds: 0,
  errors: [],
  errorCounts: {},
  fatalErrors: 0,
  nonFatalErrors: 0,
  recoveries: 0,
  gaveUp: null,
  latency: [],
  events: [],
  engineInfo: {},
  lowLatencyMode: null,
};

function log(type, detail) {
  const e = { t: Math.round(now()), type };
  if (detail !== undefined) e.detail = detail;
  if (S.events.length < MAX_EVENTS) S.events.push(e);
  const line = `[player ${(e.t / 1000).toFixed(2)}s] ${type}${detail !== undefined ? ' ' + JSON.stringify(detail) : ''}`;
  console.log(line);
  if (logEl.childNodes.length < 200) logEl.append(line + '\n');
}

function error(key, fatal, detail) {
  S.errorCounts[key] = (S.errorCounts[key] || 0) + 1;
  if (fatal) S.fatalErrors++;
  else S.nonFatalErrors++;
  if (S.errors.length < MAX_ERRORS) S.errors.push({ t: Math.round(now()), key, fatal, detail });
  log(fatal ? 'error-fatal' : 'error', { key, ...detail });
}

// --- media element events (the same for both engines) ---------------------------------------

function endStall(how) {
  if (S.stallStart === null) return;
  const ms = now() - S.stallStart;
  S.stallMs += ms;
  S.stallList.push({ at: Math.round(S.stallStart), ms: Math.round(ms), seek: S.stallStartSeek, end: how });
  S.stallStart = null;
}

video.addEventListener('playing', () => {
  S.playingEvents++;
  if (S.firstPlayingMs === null) {
    S.firstPlayingMs = Math.round(now());
    log('first-playing', { ms: S.firstPlayingMs, currentTime: video.currentTime });
  } else {
    endStall('playing');
    log('playing', { currentTime: video.currentTime });
  }
});
video.addEventListener('waiting', () => {
  log('waiting', { currentTime: video.currentTime, seeking: video.seeking, buffered: ranges(video.buffered) });
  if (S.firstPlayingMs === null || S.stallStart !== null) return;
  S.stallStart = now();
  S.stallStartSeek = video.seeking;
  if (video.seeking) S.seekStalls++;
  else S.stalls++;
});
video.addEventListener('stalled', () => {
  S.stalledEvents++;
  log('stalled', { currentTime: video.currentTime });
});
video.addEventListener('seeking', () => {
  S.seeks++;
  log('seeking', { to: video.currentTime });
});
video.addEventListener('error', () => {
  const e = video.error;
  error(`media:${e ? e.code : '?'}`, true, { message: e ? e.message : '' });
});
for (const ev of ['loadedmetadata', 'canplay', 'pause', 'ended', 'emptied']) {
  video.addEventListener(ev, () => log(ev, { currentTime: video.currentTime }));
}

function ranges(tr) {
  const out = [];
  for (let i = 0; i < tr.length; i++) out.push([+tr.start(i).toFixed(2), +tr.end(i).toFixed(2)]);
  return out;
}

function bufferAhead() {
  const b = video.buffered;
  const t = video.currentTime;
  for (let i = 0; i < b.length; i++) {
    if (b.start(i) <= t + 0.1 && t <= b.end(i)) return b.end(i) - t;
  }
  return 0;
}

// --- engines ---------------------------------------------------------------------------------

let latencyOf = () => null;
let targetOf = () => null;

function startHls() {
  if (!window.Hls || !Hls.isSupported()) {
    error('hls:unsupported', true, { mse: !!window.MediaSource });
    S.gaveUp = 'hls.js not supported';
    return;
  }
  S.engineVersion = Hls.version;
  const cfg = { lowLatencyMode: lowLatency, debug, backBufferLength: 30 };
  if (liveDelay !== null) cfg.liveSyncDuration = liveDelay;
  if (catchup) cfg.maxLiveSyncPlaybackRate = 1.5;
  const hls = new Hls(cfg);
  window.hls = hls;
  S.engineConfig = cfg;
  hls.on(Hls.Events.MANIFEST_PARSED, (_, d) => {
    log('manifest-parsed', { levels: d.levels.length });
    const p = video.play();
    if (p && p.catch) p.catch((e) => log('play-rejected', { message: String(e) }));
  });
  hls.on(Hls.Events.LEVEL_LOADED, (_, d) => {
    const x = d.details;
    const info = {
      live: x.live,
      targetduration: x.targetduration,
      partTarget: x.partTarget || null,
      canBlockReload: !!x.canBlockReload,
      canSkipUntil: x.canSkipUntil || 0,
      partHoldBack: x.partHoldBack || null,
      holdBack: x.holdBack || null,
      fragments: x.fragments.length,
      parts: x.partList ? x.partList.length : 0,
      preloadHint: !!x.preloadHint,
    };
    if (!S.engineInfo.firstLevel) {
      S.engineInfo.firstLevel = info;
      log('level-loaded', info);
    }
    S.engineInfo.lastLevel = info;
    S.engineInfo.levelLoads = (S.engineInfo.levelLoads || 0) + 1;
  });
  hls.on(Hls.Events.FRAG_LOADED, () => {
    S.engineInfo.fragLoads = (S.engineInfo.fragLoads || 0) + 1;
  });
  hls.on(Hls.Events.ERROR, (_, d) => {
    const code = d.response && d.response.code !== undefined ? d.response.code : undefined;
    const key = `hls:${d.type}:${d.details}${code !== undefined ? ':' + code : ''}`;
    const url = (d.frag && d.frag.url) || (d.context && d.context.url) || (d.networkDetails && d.networkDetails.responseURL) || undefined;
    error(key, !!d.fatal, { url, reason: d.reason || (d.error && d.error.message) || undefined });
    if (!d.fatal) return;
    if (S.recoveries >= 5) {
      S.gaveUp = key;
      log('gave-up', { key });
      hls.destroy();
      return;
    }
    S.recoveries++;
    if (d.type === Hls.ErrorTypes.NETWORK_ERROR) {
      log('recover', { how: 'startLoad' });
      hls.startLoad();
    } else if (d.type === Hls.ErrorTypes.MEDIA_ERROR) {
      log('recover', { how: 'recoverMediaError' });
      hls.recoverMediaError();
    } else {
      S.gaveUp = key;
      hls.destroy();
    }
  });
  latencyOf = () => (Number.isFinite(hls.latency) && hls.latency > 0 ? hls.latency : null);
  targetOf = () => (Number.isFinite(hls.targetLatency) ? hls.targetLatency : null);
  S.lowLatencyMode = lowLatency;
  hls.loadSource(src);
  hls.attachMedia(video);
}

function startDash() {
  if (!window.dashjs) {
    error('dash:unsupported', true, {});
    S.gaveUp = 'dash.js not loaded';
    return;
  }
  const player = dashjs.MediaPlayer().create();
  window.player = player;
  S.engineVersion = player.getVersion();
  const streaming = {
    liveCatchup: { enabled: catchup, playbackRate: { min: -0.5, max: 0.5 } },
  };
  if (liveDelay !== null) streaming.delay = { liveDelay };
  // dash.js 4 had `streaming.lowLatencyEnabled`; dash.js 5 switches low-latency mode on by itself
  // from the MPD (availabilityTimeComplete="false", or a DVB low-latency property). Set the old key
  // only where it still exists.
  const defaults = player.getSettings().streaming || {};
  if ('lowLatencyEnabled' in defaults) streaming.lowLatencyEnabled = lowLatency;
  const settings = {
    debug: { logLevel: debug ? dashjs.Debug.LOG_LEVEL_DEBUG : dashjs.Debug.LOG_LEVEL_WARNING },
    streaming,
  };
  player.updateSettings(settings);
  S.engineConfig = settings;
  const E = dashjs.MediaPlayer.events;
  // dash.js has no "fatal" flag: its ERROR event also reports a segment that stayed unavailable
  // after the retries (code 27), after which it carries on. Count as fatal only what stops
  // playback: manifest download/parse failures and media/MSE errors.
  const FATAL_CODES = new Set([10, 11, 20, 23, 25, 31, 32, 34, 35]);
  player.on(E.ERROR, (e) => {
    const err = e.error || {};
    const code = err.code !== undefined ? err.code : e.event && e.event.id;
    error(`dash:error:${code}`, FATAL_CODES.has(code), { message: err.message || (e.event && e.event.message) || String(e.error) });
  });
  player.on(E.PLAYBACK_ERROR, (e) => error('dash:playback', true, { message: e.error && e.error.message }));
  player.on(E.MANIFEST_LOADED, () => {
    S.engineInfo.manifestLoads = (S.engineInfo.manifestLoads || 0) + 1;
  });
  player.on(E.FRAGMENT_LOADING_ABANDONED, (e) => error('dash:fragment-abandoned', false, { url: e.request && e.request.url }));
  if (E.FRAGMENT_LOADING_COMPLETED) {
    // Failed attempts are in the network log (play.mjs) and in code-27 errors: only count here.
    player.on(E.FRAGMENT_LOADING_COMPLETED, (e) => {
      if (e.error) S.engineInfo.fragFailures = (S.engineInfo.fragFailures || 0) + 1;
      else S.engineInfo.fragLoads = (S.engineInfo.fragLoads || 0) + 1;
    });
  }
  player.on(E.STREAM_INITIALIZED, () => {
    S.lowLatencyMode = player.getLowLatencyModeEnabled ? player.getLowLatencyModeEnabled() : null;
    log('stream-initialized', { lowLatencyMode: S.lowLatencyMode, isDynamic: player.isDynamic() });
  });
  latencyOf = () => {
    const l = player.getCurrentLiveLatency();
    return Number.isFinite(l) && l > 0 ? l : null;
  };
  targetOf = () => {
    const t = player.getTargetLiveDelay ? player.getTargetLiveDelay() : NaN;
    return Number.isFinite(t) ? t : null;
  };
  player.initialize(video, src, true);
}

// --- sampling --------------------------------------------------------------------------------

let lastCt = null;
let lastT = null;
setInterval(() => {
  const t = now();
  const ct = video.currentTime;
  if (S.firstPlayingMs !== null && lastCt !== null) {
    const d = ct - lastCt;
    const dt = (t - lastT) / 1000;
    if (d > 0 && d < 3 * dt) S.playedSeconds += d;
    if (!video.paused && !video.ended && Math.abs(d) < 0.1) S.frozenSeconds += dt;
  }
  lastCt = ct;
  lastT = t;
  if (S.firstPlayingMs === null) return;
  if (engine === 'dash' && window.player && window.player.getLowLatencyModeEnabled) {
    S.lowLatencyMode = window.player.getLowLatencyModeEnabled();
  }
  S.latency.push({
    t: Math.round(t),
    latency: round3(latencyOf()),
    target: round3(targetOf()),
    buffer: round3(bufferAhead()),
    rate: video.playbackRate,
    currentTime: round3(ct),
    readyState: video.readyState,
  });
  document.getElementById('status').textContent =
    `t=${(t / 1000).toFixed(0)}s latency=${latencyOf()} stalls=${S.stalls} errors=${S.fatalErrors}/${S.nonFatalErrors}`;
}, 1000);

function round3(x) {
  return x === null || x === undefined || !Number.isFinite(x) ? null : Math.round(x * 1000) / 1000;
}

window.segdStats = () => {
  const out = JSON.parse(JSON.stringify(S));
  if (S.stallStart !== null) {
    const ms = now() - S.stallStart;
    out.stallMs += ms;
    out.stallList.push({ at: Math.round(S.stallStart), ms: Math.round(ms), seek: S.stallStartSeek, end: 'open' });
  }
  out.elapsedMs = Math.round(now());
  out.currentTime = video.currentTime;
  out.paused = video.paused;
  out.readyState = video.readyState;
  out.playbackRate = video.playbackRate;
  out.buffered = ranges(video.buffered);
  return out;
};

window.addEventListener('error', (e) => error('page:exception', false, { message: e.message }));
window.addEventListener('unhandledrejection', (e) => error('page:rejection', false, { message: String(e.reason) }));

if (!src) {
  error('page:no-src', true, {});
  S.gaveUp = 'no src';
} else {
  log('start', { engine, src, liveDelay, catchup, lowLatency });
  video.muted = true;
  if (engine === 'dash') startDash();
  else startHls();
}
