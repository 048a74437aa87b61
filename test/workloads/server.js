// build: none (run as: node server.js)
/*
 * server.js - a Node.js HTTP server across a checkpoint: V8's JIT code and
 * heap, libuv's threads, epoll, timers and a listening socket.
 *
 * Protocol: prints READY once listening and warmed up, then waits for
 * SIGUSR2; then prints PASS (exit 0) or "FAIL: ..." (exit 1) as its last
 * line.
 *
 * Set up: a timer counts every 2 ms; an HTTP server on 127.0.0.1 (port
 * chosen by the kernel) answers with the count and a digest of a table
 * built at start; the server is called 50 times (the JIT compiles the
 * handler).
 * After the checkpoint: the timer still counts, the server still answers
 * on its port with the same digest, computed again, and a file read on the
 * thread pool (fs.readFile) works.
 */
'use strict';
const http = require('http');
const crypto = require('crypto');
const fs = require('fs');

const table = [];
for (let i = 0; i < 10000; i++) table.push((i * 2654435761) % 4294967296);
const digest = () => crypto.createHash('sha256').update(table.join(',')).digest('hex');
const want = digest();

let ticks = 0;
setInterval(() => { ticks++; }, 2);

const server = http.createServer((req, res) => res.end(`${ticks} ${digest()}`));

function get(port) {
  return new Promise((resolve, reject) => {
    http.get({ host: '127.0.0.1', port, agent: false }, (res) => {
      let body = '';
      res.on('data', (d) => { body += d; });
      res.on('end', () => resolve(body));
    }).on('error', reject);
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

server.listen(0, '127.0.0.1', async () => {
  const port = server.address().port;
  for (let i = 0; i < 50; i++) await get(port);
  console.log('READY');
  process.on('SIGUSR2', async () => {
    const fails = [];
    try {
      const before = ticks;
      await sleep(200);
      if (ticks - before < 5) fails.push(`the timer ticked ${ticks - before} times in 200 ms`);
      const body = await get(port);
      if (body.split(' ')[1] !== want) fails.push(`the server answered ${JSON.stringify(body)}`);
      const self = await fs.promises.readFile(__filename, 'utf8');
      if (!self.includes('server.js - a Node.js HTTP server')) fails.push('reading a file on the thread pool failed');
    } catch (e) {
      fails.push(String(e));
    }
    console.log(fails.length ? 'FAIL: ' + fails.join('; ') : 'PASS');
    process.exit(fails.length ? 1 : 0);
  });
});
