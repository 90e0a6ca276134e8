// Runs one upscalerjs ESRGAN model with TensorFlow.js (pure-JS CPU backend) for benchmarks/esrgan_parity.py.
// usage: node esrgan_parity.cjs TFJS_DIR PACKAGE_DIR SCALE INPUT.bin H W OUTPUT.bin
// INPUT.bin: float32 NHWC [1, H, W, 3] in [0, 1]; it is scaled to the model definition's inputRange, as
// UpscalerJS does, and the output is scaled back from its outputRange. Prints a JSON line of facts.
"use strict";
const fs = require("fs");
const path = require("path");

const [tfjsDir, pkgDir, scaleText, inputPath, hText, wText, outputPath] = process.argv.slice(2);
const tf = require(path.join(tfjsDir, "node_modules", "@tensorflow", "tfjs"));
const pkg = JSON.parse(fs.readFileSync(path.join(pkgDir, "package.json"), "utf8"));
const short = pkg.name.split("/")[1];
// The package's own model definition: registers its custom layers (MultiplyBeta, PixelShuffle<N>x).
const definition = require(path.join(pkgDir, "dist", "cjs", "models", short, "src", `x${scaleText}`, "cjs.js"));
if (definition.setup) definition.setup(tf);

async function main() {
  await tf.setBackend("cpu");
  const modelDir = path.join(pkgDir, "models", `x${scaleText}`);
  const modelJson = JSON.parse(fs.readFileSync(path.join(modelDir, "model.json"), "utf8"));
  const specs = [];
  const buffers = [];
  for (const group of modelJson.weightsManifest) {
    specs.push(...group.weights);
    for (const p of group.paths) buffers.push(fs.readFileSync(path.join(modelDir, p)));
  }
  const all = Buffer.concat(buffers);
  const weightData = all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength);
  const model = await tf.loadLayersModel(
    tf.io.fromMemory({ modelTopology: modelJson.modelTopology, weightSpecs: specs, weightData })
  );
  const h = Number(hText), w = Number(wText);
  const raw = fs.readFileSync(inputPath);
  const input = new Float32Array(raw.buffer, raw.byteOffset, h * w * 3);
  const inTop = definition.inputRange ? definition.inputRange[1] : 1;
  const outTop = definition.outputRange ? definition.outputRange[1] : 1;
  const x = tf.tensor4d(input, [1, h, w, 3]).mul(inTop);
  const t0 = Date.now();
  const y = model.predict(x).div(outTop);
  const data = await y.data();
  const ms = Date.now() - t0;
  fs.writeFileSync(outputPath, Buffer.from(data.buffer, data.byteOffset, data.byteLength));
  console.log(JSON.stringify({
    package: `${pkg.name}@${pkg.version}`, tfjs: tf.version.tfjs, backend: tf.getBackend(),
    inputRange: definition.inputRange, outputRange: definition.outputRange, shape: y.shape, ms,
  }));
}
main().catch((e) => { console.error(e); process.exit(1); });
