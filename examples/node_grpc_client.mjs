#!/usr/bin/env node
// A Node.js client for ensemble-serving's gRPC API (Triton's inference.GRPCInferenceService), with
// @grpc/grpc-js and @grpc/proto-loader reading the .proto files kept in server/grpc/protos/.
//
//   npm ci --prefix examples        (once: installs the two packages into examples/node_modules)
//   node examples/node_grpc_client.mjs [TARGET] [MODEL] [ROWS]
//   TARGET default $ENSEMBLE_GRPC_TARGET or 127.0.0.1:8001
//   MODEL  default $ENSEMBLE_MODEL or digits
//   ROWS   JSON array of rows of features, default $ENSEMBLE_ROWS, e.g. '[[5.1, 3.5, 1.4, 0.2]]'
//
// Checks readiness, reads the model's metadata for its input name, sends the rows as raw FP32 and prints
// {"ready": true, "model_version": "1", "outputs": {name: {datatype, shape, data}}}. On a gRPC error it
// prints "gRPC CODE: message" on stderr and exits 1.

import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

const target = process.argv[2] ?? process.env.ENSEMBLE_GRPC_TARGET ?? "127.0.0.1:8001";
const model = process.argv[3] ?? process.env.ENSEMBLE_MODEL ?? "digits";
const rowsText = process.argv[4] ?? process.env.ENSEMBLE_ROWS;
if (!rowsText) {
  console.error("usage: node_grpc_client.mjs [TARGET] [MODEL] ROWS   (ROWS: JSON rows, or set ENSEMBLE_ROWS)");
  process.exit(2);
}
const rows = JSON.parse(rowsText);

const protos = join(dirname(fileURLToPath(import.meta.url)), "..", "server", "grpc", "protos");
// keepCase: the proto's field names (raw_input_contents); longs as Numbers (shapes are int64).
const definition = protoLoader.loadSync(join(protos, "grpc_service.proto"), {
  keepCase: true,
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
  includeDirs: [protos],
});
const inference = grpc.loadPackageDefinition(definition).inference;
const client = new inference.GRPCInferenceService(target, grpc.credentials.createInsecure());

// One unary call as a promise.
function call(method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline: Date.now() + 30_000 }, (error, response) =>
      error ? reject(error) : resolve(response),
    );
  });
}

// Raw contents are little-endian and row-major (Triton's binary form).
const READERS = {
  FP32: (buf, i) => buf.readFloatLE(i * 4),
  FP64: (buf, i) => buf.readDoubleLE(i * 8),
  INT64: (buf, i) => Number(buf.readBigInt64LE(i * 8)),
  INT32: (buf, i) => buf.readInt32LE(i * 4),
};
const SIZES = { FP32: 4, FP64: 8, INT64: 8, INT32: 4 };

function decode(tensor, raw) {
  const read = READERS[tensor.datatype];
  if (!read) throw new Error(`output ${tensor.name}: datatype ${tensor.datatype} is not handled here`);
  const data = Array.from({ length: raw.length / SIZES[tensor.datatype] }, (_, i) => read(raw, i));
  return { datatype: tensor.datatype, shape: tensor.shape, data };
}

try {
  const { ready } = await call("ServerReady", {});
  const metadata = await call("ModelMetadata", { name: model });
  const input = metadata.inputs[0].name;
  const values = Buffer.from(new Float32Array(rows.flat()).buffer);
  const response = await call("ModelInfer", {
    model_name: model,
    inputs: [{ name: input, datatype: "FP32", shape: [rows.length, rows[0].length] }],
    raw_input_contents: [values],
  });
  const outputs = Object.fromEntries(
    response.outputs.map((tensor, i) => [tensor.name, decode(tensor, response.raw_output_contents[i])]),
  );
  console.log(JSON.stringify({ ready, model_version: response.model_version, outputs }));
} catch (error) {
  const code = error.code === undefined ? "client error" : grpc.status[error.code];
  console.error(`gRPC ${code}: ${error.details ?? error.message}`);
  process.exitCode = 1;
} finally {
  client.close();
}
