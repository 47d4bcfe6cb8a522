#!/usr/bin/env node
// A dependency-free Node.js (>= 18, built-in fetch) client for ensemble-serving's KServe V2 API:
// one JSON infer, and one infer with Triton's binary tensor extension (request and response).
//
//   node examples/node_client.mjs [URL] [MODEL] [ROWS]
//   URL   default $ENSEMBLE_URL or http://127.0.0.1:8000
//   MODEL default $ENSEMBLE_MODEL or digits
//   ROWS  JSON array of rows of features, default $ENSEMBLE_ROWS, e.g. '[[5.1, 3.5, 1.4, 0.2]]'
//
// Prints {"json": {name: {datatype, shape, data}}, "binary": {...}}; exits 1 on any failure.

const url = process.argv[2] ?? process.env.ENSEMBLE_URL ?? "http://127.0.0.1:8000";
const model = process.argv[3] ?? process.env.ENSEMBLE_MODEL ?? "digits";
const rowsText = process.argv[4] ?? process.env.ENSEMBLE_ROWS;
if (!rowsText) {
  console.error("usage: node_client.mjs [URL] [MODEL] ROWS   (ROWS: JSON rows, or set ENSEMBLE_ROWS)");
  process.exit(2);
}
const rows = JSON.parse(rowsText);
const shape = [rows.length, rows[0].length];
const HEADER = "inference-header-content-length";

async function request(path, init = {}) {
  const response = await fetch(url + path, init);
  if (!response.ok) {
    throw new Error(`${init.method ?? "GET"} ${path}: HTTP ${response.status}: ${await response.text()}`);
  }
  return response;
}

// V2 JSON infer: data flat and row-major; the response has every output with its data.
async function inferJson(input) {
  const body = { inputs: [{ name: input, datatype: "FP32", shape, data: rows.flat() }] };
  const response = await request(`/v2/models/${model}/infer`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  const result = await response.json();
  return Object.fromEntries(
    result.outputs.map((o) => [o.name, { datatype: o.datatype, shape: o.shape, data: o.data }]),
  );
}

// Little-endian readers for the datatypes this server returns (INT64 as Number: class indices are small).
const READERS = {
  FP32: [4, (view, at) => view.getFloat32(at, true)],
  FP64: [8, (view, at) => view.getFloat64(at, true)],
  INT64: [8, (view, at) => Number(view.getBigInt64(at, true))],
  INT32: [4, (view, at) => view.getInt32(at, true)],
};

// V2 binary infer: a JSON header, then the raw little-endian FP32 rows; the header's length goes in
// Inference-Header-Content-Length. Every output is asked for as binary, and read back the same way.
async function inferBinary(input, outputs) {
  const values = new Float32Array(rows.flat());
  const tensorBytes = new Uint8Array(values.buffer);
  const header = new TextEncoder().encode(
    JSON.stringify({
      inputs: [{ name: input, datatype: "FP32", shape, parameters: { binary_data_size: tensorBytes.length } }],
      outputs: outputs.map((name) => ({ name, parameters: { binary_data: true } })),
    }),
  );
  const body = new Uint8Array(header.length + tensorBytes.length);
  body.set(header, 0);
  body.set(tensorBytes, header.length);
  const response = await request(`/v2/models/${model}/infer`, {
    method: "POST",
    headers: { "Content-Type": "application/octet-stream", [HEADER]: String(header.length) },
    body,
  });
  const raw = await response.arrayBuffer();
  const headerLength = Number(response.headers.get(HEADER) ?? raw.byteLength);
  const result = JSON.parse(new TextDecoder().decode(raw.slice(0, headerLength)));
  let offset = headerLength;
  const decoded = {};
  for (const o of result.outputs) {
    const size = o.parameters?.binary_data_size;
    if (size === undefined) {
      decoded[o.name] = { datatype: o.datatype, shape: o.shape, data: o.data };
      continue;
    }
    const [width, read] = READERS[o.datatype] ?? [];
    if (!read) throw new Error(`cannot read datatype ${o.datatype}`);
    const view = new DataView(raw, offset, size);
    const data = Array.from({ length: size / width }, (_, i) => read(view, i * width));
    decoded[o.name] = { datatype: o.datatype, shape: o.shape, data };
    offset += size;
  }
  return decoded;
}

try {
  const metadata = await (await request(`/v2/models/${model}`)).json();
  const input = metadata.inputs[0].name;
  const outputs = metadata.outputs.map((o) => o.name);
  const json = await inferJson(input);
  const binary = await inferBinary(input, outputs);
  console.log(JSON.stringify({ json, binary }));
} catch (error) {
  console.error(String(error.message ?? error));
  process.exit(1);
}
