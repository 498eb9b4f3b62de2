// download.mjs times downloads of one file with the real @huggingface/hub
// client through a gateway in mirror mode, for bench/xetbench: over Xet
// (XetBlob: the token route, a reconstruction, xorb ranges fetched
// in parallel and decoded) or over plain HTTP (WebBlob), as the client
// chooses them with downloadFile's `xet` option. It prints one JSON line
// per timed round, then one with the sha256 of an untimed last download.
//
// Environment:
//   HUB_URL    the gateway's base URL (hubUrl)
//   REPO       e.g. "org/model"
//   FILE       the path in the repo
//   MODE       "xet" or "http"
//   ROUNDS     timed downloads (default 3)
//   PARALLEL   XetBlob's parallelDownloads (default: the client's own)
import { createHash } from "node:crypto";
import { downloadFile } from "@huggingface/hub";

const env = (name, dflt) => {
  const v = process.env[name] ?? dflt;
  if (v === undefined) {
    throw new Error(`${name} is not set`);
  }
  return v;
};

const mode = env("MODE");
if (mode !== "xet" && mode !== "http") {
  throw new Error(`MODE is ${mode}: want xet or http`);
}
const params = {
  repo: env("REPO"),
  path: env("FILE"),
  hubUrl: env("HUB_URL"),
  xet: mode === "xet",
};
if (process.env.PARALLEL) {
  params.parallelDownloads = Number(process.env.PARALLEL);
}

// read streams the file and hands each piece to sink.
async function read(sink) {
  const blob = await downloadFile(params);
  if (blob === null) {
    throw new Error(`${params.repo}/${params.path}: not found`);
  }
  const kind = blob.constructor.name;
  if ((mode === "xet") !== (kind === "XetBlob")) {
    throw new Error(`MODE ${mode} but the client chose ${kind}`);
  }
  let n = 0;
  for await (const piece of blob.stream()) {
    n += piece.length;
    sink(piece);
  }
  return n;
}

const rounds = Number(env("ROUNDS", "3"));
for (let i = 0; i < rounds; i++) {
  const start = process.hrtime.bigint();
  const bytes = await read(() => {});
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  console.log(JSON.stringify({ mode, bytes, seconds }));
}
const h = createHash("sha256");
const bytes = await read((piece) => h.update(piece));
console.log(JSON.stringify({ mode, bytes, sha256: h.digest("hex") }));
