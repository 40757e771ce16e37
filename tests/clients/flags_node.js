// Evaluate herd's flags with the real posthog-node client (used by tests/flags_clients.rs).
// Usage: node flags_node.js HOST TOKEN SECRET_KEY PAIRS_JSON OUT_JSON
// For every pair: local evaluation (personal key -> /flags/definitions, onlyEvaluateLocally)
// and remote evaluation (/flags). Writes [{local: {flags, payloads}, remote: {...}}]. Then
// reads one flag of each of three pairs both ways ($feature_flag_called events) and flushes.
const fs = require('fs');
const { PostHog } = require('posthog-node');

const [host, token, secret, pairsPath, outPath] = process.argv.slice(2);
const errors = [];

(async () => {
  const local = new PostHog(token, {
    host, personalApiKey: secret, featureFlagsPollingInterval: 3600000, flushAt: 100, fetchRetryCount: 0,
  });
  const remote = new PostHog(token, { host, flushAt: 100, fetchRetryCount: 0 });
  for (const c of [local, remote]) {
    c.on('error', (err) => errors.push(String(err && err.message ? err.message : err)));
  }
  if (!(await local.waitForLocalEvaluationReady(10000))) {
    throw new Error('local definitions not loaded');
  }
  const pairs = JSON.parse(fs.readFileSync(pairsPath, 'utf8'));
  const opts = (p, withGroupProperties) => {
    const o = { groups: { company: p.company }, personProperties: { email: p.email, age: p.age } };
    if (withGroupProperties) o.groupProperties = { company: { plan: p.plan } };
    return o;
  };
  const both = (r) => ({ flags: r.featureFlags || {}, payloads: r.featureFlagPayloads || {} });
  const out = [];
  for (const p of pairs) {
    const loc = await local.getAllFlagsAndPayloads(p.distinct_id, { ...opts(p, true), onlyEvaluateLocally: true });
    const rem = await remote.getAllFlagsAndPayloads(p.distinct_id, opts(p, p.send_group_properties));
    out.push({ local: both(loc), remote: both(rem) });
  }
  for (const p of pairs.slice(0, 3)) {
    await local.getFeatureFlag('group-flag', p.distinct_id, { ...opts(p, true), onlyEvaluateLocally: true });
    await remote.getFeatureFlag('group-flag', p.distinct_id, opts(p, true));
  }
  fs.writeFileSync(outPath, JSON.stringify(out));
  await local.shutdown(10000);
  await remote.shutdown(10000);
  if (errors.length) {
    throw new Error('posthog-node errors: ' + errors.join('; '));
  }
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
