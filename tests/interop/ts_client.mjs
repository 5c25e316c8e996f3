// Drive the gateway with the TypeScript MCP SDK client (what Claude Code, Cursor and the Inspector use).
// Usage: node ts_client.mjs '<spec json>'; spec = {url} or {command, args, env}, plus calls: [{name, arguments}].
// Prints one JSON object: {tools: [...names], calls: [{ok, result} | {ok: false, code, message}]}.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StdioClientTransport } from "@modelcontextprotocol/sdk/client/stdio.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const spec = JSON.parse(process.argv[2]);
const transport = spec.url
  ? new StreamableHTTPClientTransport(new URL(spec.url), spec.headers ? { requestInit: { headers: spec.headers } } : undefined)
  : new StdioClientTransport({ command: spec.command, args: spec.args ?? [], env: { ...process.env, ...(spec.env ?? {}) }, stderr: "inherit" });
const client = new Client({ name: "ts-interop", version: "1.0.0" });
await client.connect(transport);
// Listing first is what real clients do; it is also what arms the SDK's outputSchema validation.
const tools = (await client.listTools()).tools.map((t) => t.name);
const calls = [];
for (const call of spec.calls ?? []) {
  try {
    const result = await client.callTool({ name: call.name, arguments: call.arguments ?? {} }, undefined, { timeout: (spec.timeout ?? 60) * 1000 });
    calls.push({ ok: true, result });
  } catch (err) {
    calls.push({ ok: false, code: err.code ?? null, message: String(err.message ?? err) });
  }
}
await client.close();
process.stdout.write(JSON.stringify({ tools, calls }) + "\n");
