// snapshot.mjs downloads a repository with the real @huggingface/hub client,
// the way a Node worker behind modelgate would, for the Go end-to-end tests
// (see e2e_hfjs_test.go). It prints the snapshot directory on stdout.
//
// Environment:
//   MODE        "mirror": hubUrl is the gateway (HF_ENDPOINT's equivalent);
//               "proxy": hubUrl is the Hub's own address and the requests
//               go through HTTPS_PROXY. Node's built-in fetch ignores proxy
//               variables before Node 22.21/24.5, so a real worker sets
//               undici's EnvHttpProxyAgent as the global dispatcher, as here.
//   HUB_URL     the hubUrl option
//   REPO        e.g. "org/model" (or "datasets/org/data")
//   REVISION    default "main"
//   CACHE_DIR   where the snapshot goes
//   RECORD      a file that receives every status line, header and body
//               byte the client received, for the leak search
import { appendFileSync } from "node:fs";
import { snapshotDownload } from "@huggingface/hub";
import { EnvHttpProxyAgent, setGlobalDispatcher } from "undici";

const env = (name, dflt) => {
  const v = process.env[name] ?? dflt;
  if (v === undefined) {
    throw new Error(`${name} is not set`);
  }
  return v;
};

if (env("MODE") === "proxy") {
  setGlobalDispatcher(new EnvHttpProxyAgent());
}

const record = env("RECORD");
const recordingFetch = async (input, init) => {
  const resp = await fetch(input, init);
  let head = `${resp.status} ${resp.statusText} ${resp.url}\n`;
  resp.headers.forEach((value, key) => {
    head += `${key}: ${value}\n`;
  });
  appendFileSync(record, head + "\n");
  if (resp.body === null) {
    return resp;
  }
  const tee = new TransformStream({
    transform(chunk, controller) {
      appendFileSync(record, chunk);
      controller.enqueue(chunk);
    },
  });
  const out = new Response(resp.body.pipeThrough(tee), {
    status: resp.status,
    statusText: resp.statusText,
    headers: resp.headers,
  });
  Object.defineProperty(out, "url", { value: resp.url });
  Object.defineProperty(out, "redirected", { value: resp.redirected });
  return out;
};

const dir = await snapshotDownload({
  repo: env("REPO"),
  revision: env("REVISION", "main"),
  cacheDir: env("CACHE_DIR"),
  hubUrl: env("HUB_URL"),
  fetch: recordingFetch,
});
console.log(dir);
