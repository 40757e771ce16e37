// Drive herd with the real posthog-node client (used by tests/capture_clients.rs).
// Usage: node posthog_node.js HOST TOKEN
// Sends a fixed scenario with explicit uuids and timestamps, once with compression on (the
// default) and once off, and exits non-zero if the client emitted any error.
const { PostHog } = require('posthog-node');

const [host, token] = process.argv.slice(2);
const errors = [];

async function run(disableCompression, send) {
  const client = new PostHog(token, { host, flushAt: 50, flushInterval: 0, disableCompression, fetchRetryCount: 0 });
  client.on('error', (err) => errors.push(String(err && err.message ? err.message : err)));
  send(client);
  await client.shutdown(10000);
}

(async () => {
  await run(false, (c) => {
    c.capture({
      distinctId: 'node-user',
      event: 'invited_teammate',
      properties: { seats: 3 },
      groups: { company: 'id:5', project: 42 },
      timestamp: new Date('2024-01-04T00:00:00.000Z'),
      uuid: '00000000-0000-4000-8000-000000000011',
    });
    c.groupIdentify({
      groupType: 'company',
      groupKey: 'id:5',
      properties: { plan: 'enterprise', employees: 11 },
    });
    c.identify({ distinctId: 'node-user', properties: { email: 'n@b.c' } });
  });
  await run(true, (c) => {
    c.capture({
      distinctId: 'node-user',
      event: 'upgraded_plan',
      groups: { team: 'core' },
      timestamp: new Date('2024-01-05T00:00:00.000Z'),
      uuid: '00000000-0000-4000-8000-000000000012',
    });
    c.alias({ distinctId: 'node-user', alias: 'anon-2' });
  });
  if (errors.length) {
    console.error('client errors:\n' + errors.join('\n'));
    process.exit(1);
  }
  console.log('ok');
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
