#!/usr/bin/env node
// Cross-origin fetches from a page in headless Chromium (playwright-core, the system's chromium),
// as a player's own script makes them: for CORS checks against segd with a real browser.
//
//   node fetch.mjs --page <http://host:port/player.html> --url <URL> [--url <URL> ...]
//                  [--cookie NAME=VALUE] [--credentials include|omit|same-origin]
//                  [--chromium /usr/bin/chromium]
//
// The cookie (if any) is set for the first --url's host before the page loads (path `/`,
// SameSite Lax: the page and segd on one host with other ports are the same site, another
// origin). The page then runs `fetch(url, {credentials})` for each --url in order and the script
// prints one JSON line per URL: {url, ok, status, bytes, error}. `error` is the TypeError a
// browser raises when the CORS check refuses the response (the script cannot see why; the
// browser's console message is printed as `console`). Exit 0 once every fetch has run, 3 when
// the browser or page failed.
import { chromium } from 'playwright-core';

const args = { page: null, url: [], cookie: null, credentials: 'include', chromium: process.env.CHROMIUM || '/usr/bin/chromium' };
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i += 2) {
  const k = argv[i].replace(/^--/, '');
  if (!(k in args) || i + 1 >= argv.length) {
    console.error(`fetch.mjs: bad argument ${argv[i]}`);
    process.exit(2);
  }
  if (Array.isArray(args[k])) args[k].push(argv[i + 1]);
  else args[k] = argv[i + 1];
}
if (!args.page || args.url.length === 0) {
  console.error('usage: node fetch.mjs --page PAGE_URL --url URL [--url URL ...] [--cookie NAME=VALUE] [--credentials MODE]');
  process.exit(2);
}

let browser;
try {
  browser = await chromium.launch({ executablePath: args.chromium, args: ['--no-sandbox', '--disable-gpu', '--no-first-run'], headless: true, timeout: 30000 });
  const context = await browser.newContext();
  if (args.cookie) {
    const eq = args.cookie.indexOf('=');
    const target = new URL(args.url[0]);
    await context.addCookies([{ name: args.cookie.slice(0, eq), value: args.cookie.slice(eq + 1), domain: target.hostname, path: '/', sameSite: 'Lax' }]);
  }
  const page = await context.newPage();
  page.on('console', (m) => console.log(JSON.stringify({ console: m.text() })));
  await page.goto(args.page, { timeout: 30000 });
  for (const url of args.url) {
    const result = await page.evaluate(async ({ url, credentials }) => {
      try {
        const r = await fetch(url, { credentials, cache: 'no-store' });
        const body = await r.arrayBuffer();
        return { url, ok: r.ok, status: r.status, bytes: body.byteLength, error: null };
      } catch (e) {
        return { url, ok: false, status: 0, bytes: 0, error: String(e) };
      }
    }, { url, credentials: args.credentials });
    console.log(JSON.stringify(result));
  }
  await browser.close();
} catch (e) {
  console.error(`fetch.mjs: ${e.message}`);
  if (browser) await browser.close().catch(() => {});
  process.exit(3);
}
