#!/usr/bin/env node
// summary.md from run.sh's raw results: node report.mjs META.json RAW_DIR > summary.md
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';

const [metaPath, rawDir] = process.argv.slice(2);
if (!metaPath || !rawDir) {
  console.error('usage: node report.mjs META.json RAW_DIR');
  process.exit(2);
}
const meta = JSON.parse(readFileSync(metaPath, 'utf8'));
const runs = {};
for (const f of readdirSync(rawDir)) {
  if (!f.endsWith('.json') || f === 'meta.json') continue;
  runs[f.replace(/\.json$/, '')] = JSON.parse(readFileSync(join(rawDir, f), 'utf8'));
}

const fmt = (x, d = 2) => (x === null || x === undefined ? '–' : Number(x).toFixed(d));
const statuses = (c) =>
  c ? `${c.n}: ` + Object.entries(c.status).map(([k, v]) => `${v}×${k}`).join(' ') + (c.failed ? ` (${c.failed} aborted)` : '') : '–';

const out = [];
const p = (s = '') => out.push(s);
const any = Object.values(runs)[0];
p(`# Live playback through segd in a browser player (${meta.date.slice(0, 10)}, ${meta.commit})`);
p();
p('`benches/players/run.sh`: ffmpeg pushes live streams into segd (PUT, upload token in the path),');
p('headless Chromium plays them with hls.js (`lowLatencyMode: true`) or dash.js (low-latency');
p(`mode, catch-up on) for ${meta.seconds} s each, one after the other.`);
p();
p(`- segd: \`${meta.segdVersion}\` (${meta.segd}), \`[live]\`: ${meta.live}`);
if (any) {
  p(`- Chromium ${any.summary.browser}, ${Object.values(runs).map((r) => `${r.summary.engine} ${r.summary.engineVersion}`).filter((v, i, a) => a.indexOf(v) === i).join(', ')}`);
}
p(`- ${meta.ffmpeg}; ${meta.machine}`);
p();
p('| source | player | result | startup | stalls (time) | seek waits | frozen | latency p50 / p95 (target) | player errors fatal / other | segment GETs | playlist GETs |');
p('|---|---|---|---|---|---|---|---|---|---|---|');
for (const [name, src] of Object.entries(meta.sources)) {
  if (src.skipped) {
    p(`| ${name} | – | skipped: ${src.skipped} | | | | | | | | |`);
    continue;
  }
  const r = runs[name];
  if (!r) {
    p(`| ${name} | – | no result (exit ${src.exit}) | | | | | | | | |`);
    continue;
  }
  const s = r.summary;
  const seg = s.requests.segment;
  const pl = s.requests.playlist;
  const result = s.ok ? 'ok' : `**not ok**: ${s.reasons.join('; ')}`;
  p(
    `| ${name} | ${s.engine} | ${result} | ${fmt(s.startupSeconds)} s | ${s.stalls} (${fmt(s.stallSeconds, 1)} s) | ${s.seekStalls} | ${fmt(s.frozenSeconds, 0)} s | ` +
      `${fmt(s.latency.p50)} / ${fmt(s.latency.p95)} s (${fmt(s.latency.target, 1)}) | ${s.errors.fatal} / ${s.errors.nonFatal} | ${statuses(seg)} | ${statuses(pl)} |`,
  );
}
p();
p('startup: page load to the first `playing`. stalls: `waiting` after the first `playing`, not');
p('caused by a seek (time until playback resumed, or until the end if it never did); seek waits:');
p('waits while the player seeks (e.g. jumping back to the live edge). frozen: seconds the playhead');
p(`did not move although not paused. latency: samples every second, the first ${any ? any.summary.latency.warmupSeconds : 5} s after the`);
p('start left out; hls.js `hls.latency`, dash.js `getCurrentLiveLatency()` (wall clock from the');
p("MPD's UTCTiming, served by the page server); target: the player's target latency.");
p();

for (const [name, src] of Object.entries(meta.sources)) {
  const r = runs[name];
  p(`## ${name}`);
  p();
  p('```');
  p(src.command || '(not run)');
  p('```');
  p();
  if (src.skipped) {
    p(`Skipped: ${src.skipped}.`);
    p();
    continue;
  }
  if (!r) {
    p(`No result (run.sh exit ${src.exit}); see logs/.`);
    p();
    continue;
  }
  const s = r.summary;
  p(`- URL \`${s.url}\`, ${s.engine} ${s.engineVersion}, low-latency mode: ${s.lowLatencyMode}; settings \`${JSON.stringify(s.settings)}\``);
  p(`- played ${fmt(s.playedSeconds, 1)} s of media; ${s.seeks} seek(s); latency min ${fmt(s.latency.min)} s, max ${fmt(s.latency.max)} s, mean ${fmt(s.latency.mean)} s over ${s.latency.samples} samples`);
  const info = s.engineInfo || {};
  if (info.firstLevel) {
    p(`- playlist as hls.js saw it: \`${JSON.stringify(info.lastLevel)}\``);
  }
  const reqs = Object.entries(s.requests)
    .filter(([k]) => k !== 'blockingReloads')
    .map(([k, c]) => `${k} ${statuses(c)} (p50 ${c.p50Ms ?? '–'} ms, p95 ${c.p95Ms ?? '–'} ms)`);
  p(`- requests: ${reqs.join('; ')}`);
  if (s.requests.blockingReloads) {
    const b = s.requests.blockingReloads;
    p(`- blocking playlist reloads (\`_HLS_msn\`): ${b.n}, held p50 ${b.p50Ms} ms, p95 ${b.p95Ms} ms`);
  }
  const kinds = Object.entries(s.errors.byKind || {});
  if (kinds.length) p(`- player errors: ${kinds.map(([k, v]) => `\`${k}\` ×${v}`).join(', ')}`);
  const firstErr = (r.stats && r.stats.errors) || [];
  if (firstErr.length) {
    const e = firstErr[0];
    p(`- first error at ${fmt(e.t / 1000, 1)} s: \`${e.key}\` ${e.detail && (e.detail.message || e.detail.url) ? '— ' + (e.detail.message || e.detail.url) : ''}`);
  }
  const stalls = (r.stats && r.stats.stallList) || [];
  if (stalls.length) {
    p(`- stalls (start s / length s): ${stalls.slice(0, 15).map((x) => `${fmt(x.at / 1000, 1)}/${fmt(x.ms / 1000, 1)}${x.seek ? ' seek' : ''}${x.end === 'open' ? ' (still stalled at the end)' : ''}`).join(', ')}${stalls.length > 15 ? ', …' : ''}`);
  }
  const lat = (r.stats && r.stats.latency) || [];
  if (lat.length) {
    const every = Math.max(1, Math.floor(lat.length / 15));
    p(`- latency over time (s since page load: latency s): ${lat.filter((_, i) => i % every === 0).map((x) => `${fmt(x.t / 1000, 0)}: ${fmt(x.latency, 1)}`).join(', ')}`);
  }
  p();
}
process.stdout.write(out.join('\n') + '\n');
