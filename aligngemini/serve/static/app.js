// aligngemini web page: send each chosen image to /v1/detect and show what came back.
// Images stay in this page's memory (File objects, thumbnails as object URLs); nothing is stored.
"use strict";

(function () {
  const $ = (sel) => document.querySelector(sel);
  const MAX_IN_FLIGHT = 4; // requests at once; the server batches them together
  const MAX_RETRIES = 3; // on 503 (queue full), after the server's Retry-After

  const state = { info: null, token: null, inFlight: 0, waiting: [], items: [] };

  // -- server calls -------------------------------------------------------------------------------
  function headers() {
    return state.token ? { Authorization: "Bearer " + state.token } : {};
  }

  async function errorMessage(resp) {
    try {
      const body = await resp.json();
      if (body && body.error) return body.error.message;
    } catch (_) { /* not JSON */ }
    return "the server answered " + resp.status;
  }

  async function loadInfo() {
    let resp;
    try {
      resp = await fetch("/v1/info", { headers: headers() });
    } catch (err) {
      $("#bundle-line").textContent = "Cannot reach the server.";
      return;
    }
    if (resp.status === 401) {
      showAuth(state.token ? "That token was not accepted." : "");
      $("#bundle-line").textContent = "Waiting for an access token.";
      return;
    }
    if (resp.status === 503) {
      $("#bundle-line").textContent = "The models are still loading…";
      setTimeout(loadInfo, 2000);
      return;
    }
    if (!resp.ok) {
      $("#bundle-line").textContent = "Cannot read the bundle: " + (await errorMessage(resp));
      return;
    }
    state.info = await resp.json();
    $("#auth").hidden = true;
    renderInfo(state.info);
    pump();
  }

  function showAuth(message) {
    $("#auth").hidden = false;
    $("#auth-msg").textContent = message;
    $("#token").focus();
  }

  // -- bundle facts ---------------------------------------------------------------------------------
  function fmt(p) {
    return p === null || p === undefined ? "–" : p.toFixed(3);
  }

  function bandText(band) {
    return band ? "uncertain band " + fmt(band[0]) + "–" + fmt(band[1]) : "no uncertain band";
  }

  function renderInfo(info) {
    const b = info.bundle;
    const parts = b.branches.map((br) => br.role + " ≥ " + fmt(br.threshold));
    $("#bundle-line").textContent =
      "Bundle " + b.name + " · " + parts.join(" · ") + " · " + b.fusion_rule.toUpperCase() + " rule · " +
      bandText(b.uncertain_band);
    $("#rule-name").textContent = b.fusion_rule.toUpperCase();
    $("#legend-band").hidden = !b.uncertain_band;
    const mb = (info.limits.max_file_bytes / (1024 * 1024)).toFixed(0);
    $("#drop-hint").textContent =
      "JPEG, PNG, WebP, GIF, BMP or TIFF, up to " + mb + " MB each. Images are checked in memory and never stored.";
    const facts = $("#bundle-facts");
    facts.replaceChildren();
    const add = (term, desc) => {
      const dt = document.createElement("dt");
      dt.textContent = term;
      const dd = document.createElement("dd");
      dd.textContent = desc;
      facts.append(dt, dd);
    };
    add("Bundle", b.name + " (" + b.id + ")");
    add("Fusion", b.fusion_rule + " rule, " + bandText(b.uncertain_band));
    for (const br of b.branches) {
      const src = Object.entries(br.sources).map(([k, v]) => k + ": " + v).join("; ");
      add(br.role + " branch", (br.family || "?") + ", threshold " + fmt(br.threshold) + (src ? " · " + src : ""));
    }
    for (const role of b.missing_branches) add(role + " branch", "missing: verdicts rest on the other branch");
    add("Explanations", info.explain.available ? "available" : info.explain.reason);
    $("#card").textContent = b.card || "(this bundle has no model card)";
  }

  // -- intake ---------------------------------------------------------------------------------------
  function addFiles(fileList) {
    const files = Array.from(fileList || []);
    if (!files.length) return;
    for (const file of files) {
      const item = makeItem(file);
      state.items.push(item);
      state.waiting.push(item);
    }
    $("#clear").hidden = false;
    $("#legend").hidden = false;
    setStatus();
    pump();
  }

  function pump() {
    if (!state.info) return; // after the info (and token) arrive
    while (state.inFlight < MAX_IN_FLIGHT && state.waiting.length) {
      const item = state.waiting.shift();
      state.inFlight += 1;
      detect(item).finally(() => {
        state.inFlight -= 1;
        setStatus();
        pump();
      });
    }
  }

  function setStatus() {
    const pending = state.waiting.length + state.inFlight;
    const done = state.items.length - pending;
    $("#status").textContent = state.items.length
      ? done + " of " + state.items.length + " image(s) checked" + (pending ? "…" : ".")
      : "";
  }

  async function detect(item, attempt = 0) {
    const limits = state.info.limits;
    if (item.file.size > limits.max_file_bytes) {
      showError(item, item.file.name + " is " + item.file.size + " bytes, over the server's limit of " +
        limits.max_file_bytes + " bytes per file.");
      return;
    }
    const form = new FormData();
    form.append("files", item.file, item.file.name);
    let resp;
    try {
      resp = await fetch("/v1/detect", { method: "POST", body: form, headers: headers() });
    } catch (err) {
      showError(item, "Cannot reach the server.");
      return;
    }
    if (resp.status === 503 && attempt < MAX_RETRIES) {
      const wait = Math.min(30, Number(resp.headers.get("Retry-After")) || 1);
      item.verdictEl.textContent = "Server busy, retrying…";
      await new Promise((r) => setTimeout(r, wait * 1000));
      return detect(item, attempt + 1);
    }
    if (resp.status === 401) {
      showAuth("The token was not accepted.");
      showError(item, "This server needs an access token.");
      return;
    }
    if (!resp.ok) {
      showError(item, await errorMessage(resp));
      return;
    }
    const body = await resp.json();
    showRecord(item, body.results[0]);
  }

  // -- result cards ---------------------------------------------------------------------------------
  function makeItem(file) {
    const node = $("#result-template").content.firstElementChild.cloneNode(true);
    const url = URL.createObjectURL(file); // thumbnail from memory; revoked on clear
    const img = node.querySelector(".thumb");
    img.src = url;
    img.alt = "Thumbnail of " + file.name;
    node.querySelector(".name").textContent = file.name;
    const item = {
      file, url, node,
      verdictEl: node.querySelector(".verdict"),
      explainBtn: node.querySelector(".explain"),
    };
    item.explainBtn.addEventListener("click", () => explain(item));
    setExplainable(item, false, "Available once the image is checked.");
    $("#results").append(node);
    return item;
  }

  function setExplainable(item, can, why, short) {
    const btn = item.explainBtn;
    // aria-disabled rather than disabled: the button stays focusable and its tooltip readable by keyboard.
    btn.setAttribute("aria-disabled", can ? "false" : "true");
    btn.title = can ? "Ask the semantic branch why" : why;
    item.node.querySelector(".explain-why").textContent = can ? "" : short || why;
  }

  function meter(label, value, threshold, band, note) {
    const row = document.createElement("div");
    row.className = "meter-row";
    const name = document.createElement("span");
    name.className = "meter-label";
    name.textContent = label;
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.setAttribute("role", "meter");
    bar.setAttribute("aria-label", label + " P(fake), threshold " + fmt(threshold));
    bar.setAttribute("aria-valuemin", "0");
    bar.setAttribute("aria-valuemax", "1");
    if (band) {
      const shade = document.createElement("div");
      shade.className = "band";
      shade.style.left = band[0] * 100 + "%";
      shade.style.width = (band[1] - band[0]) * 100 + "%";
      shade.title = bandText(band);
      bar.append(shade);
    }
    const fill = document.createElement("div");
    fill.className = "fill" + (value !== null && value >= threshold ? " over" : "");
    if (value !== null) {
      bar.setAttribute("aria-valuenow", String(value));
      fill.style.width = Math.max(0, Math.min(1, value)) * 100 + "%";
    }
    const tick = document.createElement("div");
    tick.className = "tick";
    tick.style.left = threshold * 100 + "%";
    tick.title = "threshold " + fmt(threshold);
    bar.append(fill, tick);
    const val = document.createElement("span");
    val.className = "meter-value";
    val.textContent = value === null ? "–" : fmt(value);
    row.append(name, bar, val);
    if (note) {
      const n = document.createElement("span");
      n.className = "chip";
      n.textContent = note;
      row.append(n);
    }
    return row;
  }

  const VERDICT_WORDS = { fake: "Fake", real: "Real", uncertain: "Uncertain", error: "Unscored" };

  function showRecord(item, rec) {
    if (rec.error) {
      showError(item, rec.error);
      return;
    }
    const info = state.info.bundle;
    item.node.dataset.state = "done";
    item.node.dataset.verdict = rec.verdict;
    item.verdictEl.dataset.verdict = rec.verdict;
    item.verdictEl.className = "verdict verdict-" + rec.verdict;
    item.verdictEl.textContent = (VERDICT_WORDS[rec.verdict] || rec.verdict) + " · P(fake) " + fmt(rec.p_fake);
    const meters = item.node.querySelector(".meters");
    meters.replaceChildren(meter("fused", rec.p_fake, 0.5, info.uncertain_band, null));
    for (const br of info.branches) {
      const res = rec.branches[br.role];
      meters.append(meter(br.role, res ? res.p_fake : null, br.threshold, null,
        res && res.fake ? "fired" : null));
    }
    item.node.querySelector(".fired").textContent = rec.fired.length
      ? "Fired: " + rec.fired.join(", ") + (rec.verdict === "uncertain" ? " (inside the uncertain band)" : "")
      : "No branch fired" + (rec.verdict === "uncertain" ? " (inside the uncertain band)" : "") + ".";
    showProvenance(item.node.querySelector(".provenance"), rec.provenance);
    const ex = state.info.explain;
    setExplainable(item, ex.available, ex.available ? "" : ex.reason, "Not available with this bundle");
  }

  // One line on what the file itself declares: who signed it and with which tool, or its metadata.
  function provenanceLine(prov) {
    if (!prov || (!prov.c2pa && prov.declared_ai === null && prov.evidence.length === 0)) return "";
    const c = prov.c2pa;
    let head = prov.declared_ai === true ? "The file declares AI generation"
      : prov.declared_ai === false ? "The file declares a capture" : "File metadata";
    if (c && !c.remote_url) {
      const tool = c.claim_generator || "an unnamed tool";
      const issuer = c.issuer ? ", issued by " + c.issuer : "";
      const sig = c.signature_valid ? (c.trusted ? "signed, trusted" : "signed, issuer not in a trust list")
        : "signature does not verify";
      return head + " · C2PA from " + tool + issuer + " (" + sig + ")";
    }
    return head + " · unsigned · " + prov.evidence.slice(0, 2).join("; ");
  }

  function showProvenance(el, prov) {
    const line = provenanceLine(prov);
    el.hidden = !line;
    el.textContent = line ? "Provenance: " + line : "";
  }

  function showError(item, message) {
    item.node.dataset.state = "error";
    item.verdictEl.dataset.verdict = "error";
    item.verdictEl.className = "verdict verdict-error";
    item.verdictEl.textContent = "Not checked";
    const err = item.node.querySelector(".error-text");
    err.hidden = false;
    err.textContent = message;
    setExplainable(item, false, "Only checked images can be explained.");
  }

  async function explain(item) {
    const btn = item.explainBtn;
    if (btn.getAttribute("aria-disabled") === "true" || btn.dataset.busy) return;
    btn.dataset.busy = "1";
    btn.textContent = "Explaining…";
    const out = item.node.querySelector(".explanation");
    const form = new FormData();
    form.append("file", item.file, item.file.name);
    try {
      const resp = await fetch("/v1/explain", { method: "POST", body: form, headers: headers() });
      out.hidden = false;
      out.textContent = resp.ok ? (await resp.json()).explanation : await errorMessage(resp);
    } catch (err) {
      out.hidden = false;
      out.textContent = "Cannot reach the server.";
    } finally {
      delete btn.dataset.busy;
      btn.textContent = "Explain";
    }
  }

  function clearAll() {
    for (const item of state.items) URL.revokeObjectURL(item.url);
    state.items = [];
    state.waiting = [];
    $("#results").replaceChildren();
    $("#clear").hidden = true;
    $("#legend").hidden = true;
    setStatus();
    $("#drop").focus();
  }

  // -- wiring ---------------------------------------------------------------------------------------
  document.addEventListener("DOMContentLoaded", () => {
    const drop = $("#drop");
    const input = $("#file-input");
    drop.addEventListener("click", () => input.click());
    input.addEventListener("change", () => {
      addFiles(input.files);
      input.value = ""; // the same file can be chosen again
    });
    // Dropping anywhere on the page adds the images instead of navigating away to them.
    document.addEventListener("dragover", (e) => {
      e.preventDefault();
      drop.classList.add("dragging");
    });
    document.addEventListener("dragleave", (e) => {
      if (e.target === document.documentElement || e.target === drop) drop.classList.remove("dragging");
    });
    document.addEventListener("drop", (e) => {
      e.preventDefault();
      drop.classList.remove("dragging");
      addFiles(e.dataTransfer && e.dataTransfer.files);
    });
    $("#clear").addEventListener("click", clearAll);
    $("#auth-form").addEventListener("submit", (e) => {
      e.preventDefault();
      state.token = $("#token").value.trim() || null;
      loadInfo();
    });
    loadInfo();
  });
})();
