import { chromium } from 'playwright-core';
import { readdirSync } from 'fs';
const last = () => Math.max(...readdirSync('/tmp/lldash/vol/live/d').filter(f => f.startsWith('chunk')).map(f => parseInt(f.slice(14, 19), 10)));
const b = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--no-sandbox','--disable-gpu','--disable-quic'] });
const p = await b.newPage();
p.on('requestfailed', r => console.log('failed', r.url(), r.failure() && r.failure().errorText));
p.on('requestfinished', r => console.log('finished', r.url()));
await p.goto('http://127.0.0.1:25082/player.html');
for (let i = 0; i < 6; i++) {
  const a = last(); while (last() === a) await new Promise(r => setTimeout(r, 20));
  const u = `http://127.0.0.1:25080/live/d/chunk-stream0-${String(a + 2).padStart(5, '0')}.m4s${process.argv[2] || ''}`;
  const out = await p.evaluate(async (u) => {
    const r = await fetch(u); const rd = r.body.getReader(); let n = 0, c = 0;
    for (;;) { const { value, done } = await rd.read(); if (done) break; n += value.length; c++; }
    return { status: r.status, n, c };
  }, u);
  console.log(i, JSON.stringify(out));
  await new Promise(r => setTimeout(r, 200));
}
await new Promise(r => setTimeout(r, 500));
await b.close();
