// Drives the real Node SDKs (posthog-node, @rudderstack/rudder-sdk-node) against
// local recorders.  Usage: node drive_node.cjs '<json config>'.
// Every call the conformance test checks is made here; the SDKs build the bodies.
const { PostHog } = require('posthog-node');
const Analytics = require('@rudderstack/rudder-sdk-node');

async function posthog(cfg) {
  const ph = new PostHog(cfg.posthog_key, {
    host: cfg.posthog_host, flushAt: 100, flushInterval: 0, disableGeoip: true,
    fetchRetryCount: 0,
  });
  const ws = 'ws_node';
  ph.capture({
    distinctId: 'node_user_1', event: 'tool_used', groups: { workspace: ws },
    properties: { tool_id: 'tool_n1', tool_type: 'http', status: 'success', latency_ms: 12.5 },
  });
  ph.capture({
    distinctId: 'node_user_1', event: 'flow_executed', timestamp: new Date(cfg.explicit_ts),
    properties: { flow_id: 'flow_n1', success: true, time_ms: 2500, workspace_id: ws },
  });
  ph.capture({ distinctId: 'node_user_1', event: '$pageview',
    properties: { $current_url: 'https://app.example.com/flows', workspace_id: ws } });
  ph.identify({ distinctId: 'node_user_1', properties: { email: 'n1@example.com', plan: 'team' } });
  ph.groupIdentify({ groupType: 'workspace', groupKey: ws, properties: { name: 'Node WS' } });
  ph.alias({ distinctId: 'node_user_1', alias: 'node_anon_1' });
  await ph.shutdown();
}

async function rudder(cfg) {
  const client = new Analytics(cfg.write_key, {
    dataPlaneUrl: cfg.rudder_url, flushAt: 100, flushInterval: 600000, maxRetries: 0,
  });
  const ws = 'ws_rnode';
  client.track({ userId: 'rnode_user_1', event: 'tool_used',
    properties: { tool_id: 'tool_r1', tool_type: 'sql', status: 'error', latency_ms: 40,
      workspace_id: ws } });
  client.track({ userId: 'rnode_user_1', event: 'flow_executed', timestamp: new Date(cfg.explicit_ts),
    properties: { flow_id: 'flow_r1', success: false, time_ms: 900, workspace_id: ws } });
  client.identify({ userId: 'rnode_user_1', traits: { email: 'r1@example.com', plan: 'free' } });
  client.page({ userId: 'rnode_user_1', name: 'Pricing', category: 'Marketing',
    properties: { url: 'https://example.com/pricing', workspace_id: ws } });
  client.group({ userId: 'rnode_user_1', groupId: ws, traits: { name: 'RNode WS' } });
  client.alias({ userId: 'rnode_user_1', previousId: 'rnode_anon_1' });
  await new Promise((resolve, reject) => client.flush((err) => (err ? reject(err) : resolve())));
}

(async () => {
  const cfg = JSON.parse(process.argv[2]);
  await posthog(cfg);
  await rudder(cfg);
})().catch((err) => { console.error(err); process.exit(1); });
