// Reranker playground: plain JavaScript, no dependencies, no build step, nothing from the network
// but this service. The page ranks through the seed-shape POST /rerank (its answer carries the
// ranking, token usage, the server's time and per-document truncation marks).
// The API key lives only in the #api-key input, i.e. in this page's memory: it is never written to
// storage, cookies or URLs, and the snippets use the $RERANKER_API_KEY placeholder instead.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  // The service root, from the page's own address: the same at / and /playground, and under a
  // proxy's path prefix.
  const base = new URL(".", document.baseURI);
  const api = (path) => new URL(path, base).href;
  const root = base.href.replace(/\/$/, "");
  let config = { model: "", default_instruction: "", max_documents: 1000, auth: false, score_route: false, images: false };
  let shown = "curl";
  let engineTimer = null;
  let ranks = 0; // completed Rank clicks, published on <body data-ranks> for scripts and tests
  // Image documents (a Qwen3-VL reranker only): {name, url}, url a data: URL read in this page;
  // sent after the text documents, each as vLLM's {"content": [{"type": "image_url", ...}]}.
  const images = [];

  // --- the request ---------------------------------------------------------------------------
  const imageDocument = (image) => ({ content: [{ type: "image_url", image_url: { url: image.url } }] });

  function documents() {
    return textDocuments().concat(images.map(imageDocument));
  }

  // A JSON array (strings or objects with "text") when the box holds one; else one document per
  // non-empty line. Whatever the array holds is sent as it is: the server says what is wrong.
  function textDocuments() {
    const raw = $("documents").value;
    const t = raw.trim();
    if (t.startsWith("[") && t.endsWith("]")) {
      try {
        const parsed = JSON.parse(t);
        if (Array.isArray(parsed)) return parsed;
      } catch (e) { /* not JSON after all: lines */ }
    }
    return raw.split(/\r?\n/).filter((line) => line.trim() !== "");
  }

  // vLLM's multimodal document: its image URLs and its text parts
  const isContent = (d) => !!d && typeof d === "object" && Array.isArray(d.content);
  const imagesOf = (d) => (isContent(d) ? d.content.filter((p) => p && p.type === "image_url" && p.image_url)
    .map((p) => p.image_url.url) : []);
  const textOf = (d) => (typeof d === "string" ? d : d && typeof d.text === "string" ? d.text
    : isContent(d) ? d.content.filter((p) => p && p.type === "text").map((p) => p.text).join("\n") : JSON.stringify(d));

  function request() {
    const body = { query: $("query").value, documents: documents(), return_documents: false };
    const instruction = $("instruction").value;
    if (instruction.trim()) body.instruction = instruction;
    const topN = $("top-n").value;
    if (topN !== "") body.top_n = Number(topN);
    if ($("raw").checked) body.raw_scores = true;
    return body;
  }

  // --- ranking -------------------------------------------------------------------------------
  async function rank() {
    await rankOnce();
    document.body.dataset.ranks = String(++ranks);
  }

  async function rankOnce() {
    const body = request();
    const headers = { "Content-Type": "application/json" };
    const key = $("api-key").value.trim();
    if (key) headers.Authorization = "Bearer " + key;
    showError("");
    $("rank").disabled = true;
    $("stats").textContent = "ranking…";
    const started = performance.now();
    let response;
    try {
      response = await fetch(api("rerank"), {
        method: "POST", headers, body: JSON.stringify(body), cache: "no-store", credentials: "omit",
      });
    } catch (e) {
      finish();
      showError("Cannot reach the service at " + root + " (" + e.message + ").");
      checkEngine();
      return;
    }
    const elapsed = performance.now() - started;
    const data = await response.json().catch(() => null);
    finish();
    if (!response.ok || !data || !Array.isArray(data.results)) {
      showError(describeError(response, data));
      if (response.status === 401) $("key-row").hidden = false;
      if (response.status === 503) checkEngine();
      return;
    }
    showResults(body, data, elapsed);
  }

  function finish() {
    $("rank").disabled = false;
    $("stats").textContent = "";
    $("results").replaceChildren();
  }

  // The server's own words (`detail`), its status, and when to retry if it said so.
  function describeError(response, data) {
    let detail = data && data.detail !== undefined ? data.detail : data ? JSON.stringify(data) : response.statusText;
    if (typeof detail !== "string") detail = JSON.stringify(detail);
    const lines = ["HTTP " + response.status + ": " + detail];
    const type = data && data.type;
    if (type === "engine_unavailable") lines.push("The service cannot reach the engine.");
    else if (response.status === 503) lines.push("The service cannot take this work right now.");
    const retry = response.headers.get("Retry-After");
    if (retry) lines.push("Retry after " + retry + " s.");
    return lines.join("\n");
  }

  function showError(message) {
    $("error").textContent = message;
    $("error").hidden = !message;
  }

  function cell(cls, text) {
    const el = document.createElement("span");
    el.className = cls;
    el.textContent = text;
    return el;
  }

  function showResults(body, data, elapsed) {
    const raw = !!body.raw_scores;
    const list = $("results");
    let cut = 0;
    data.results.forEach((r, position) => {
      const score = r.relevance_score;
      const li = document.createElement("li");
      li.dataset.index = r.index;
      li.dataset.score = score; // full precision, for scripts
      const bar = document.createElement("span");
      bar.className = "bar";
      const fill = document.createElement("span");
      // raw logits: the bar shows sigmoid(logit), which is P(yes) again
      const width = raw ? 1 / (1 + Math.exp(-score)) : score;
      fill.style.width = (Math.min(1, Math.max(0, width)) * 100).toFixed(1) + "%";
      bar.append(fill);
      const value = cell("score", (raw && score >= 0 ? "+" : "") + score.toFixed(4));
      value.title = String(score);
      const doc = body.documents[r.index];
      const text = cell("text", textOf(doc));
      for (const url of imagesOf(doc).reverse()) {
        const img = document.createElement("img");
        img.className = "thumb";
        img.src = url;
        const known = images.find((i) => i.url === url);
        img.alt = img.title = known ? known.name : "image";
        if (!textOf(doc)) text.append(img.alt);
        text.prepend(img);
      }
      if (r.truncated) {
        cut += 1;
        const mark = cell("cut", "truncated");
        mark.title = "cut to fit the model's context (" + config.max_model_len + " tokens with the prompt)";
        text.append(mark);
      }
      li.append(cell("rank", String(position + 1)), cell("index", "#" + r.index), bar, value, text);
      list.append(li);
    });
    const parts = [
      data.results.length + " of " + body.documents.length + " documents",
      data.usage.total_tokens + " tokens",
      "server " + Number(data.processed_in_ms).toFixed(1) + " ms",
      "round trip " + elapsed.toFixed(0) + " ms",
      raw ? "scores: logit(yes) − logit(no)" : "scores: P(yes)",
    ];
    if (cut) parts.push(cut + " truncated");
    $("stats").textContent = parts.join(" · ");
  }

  // --- engine state --------------------------------------------------------------------------
  async function checkEngine() {
    clearTimeout(engineTimer);
    let ok = false;
    let text;
    try {
      let r = await fetch(api("ready"), { cache: "no-store" });
      // a proxy may keep /ready local (deploy/nginx answers 403): /health is public
      if (r.status !== 200 && r.status !== 503) r = await fetch(api("health"), { cache: "no-store" });
      const body = await r.json().catch(() => ({}));
      ok = r.ok;
      text = ok ? "engine ready" : "not ready: " + (body.reason || (body.engine ? "engine " + body.engine : "HTTP " + r.status));
    } catch (e) {
      text = "cannot reach the service";
    }
    const el = $("engine");
    el.textContent = text;
    el.className = "pill " + (ok ? "ok" : "bad");
    if (!ok) engineTimer = setTimeout(checkEngine, 3000);
  }

  // --- snippets (the same request, for your own code) ------------------------------------------
  const sh = (s) => "'" + s.replace(/'/g, "'\\''") + "'";
  const json = (v) => JSON.stringify(v, null, 2);
  const strings = (docs) => docs.map(textOf);
  const textOnly = (docs) => docs.filter((d) => !imagesOf(d).length);
  const leftOut = (body, api) => {
    const n = body.documents.length - textOnly(body.documents).length;
    return n ? [n + " image document" + (n > 1 ? "s" : "") + " left out: " + api + " takes text only"] : [];
  };
  // Jina's image document: {"image": data URL}, with the text beside it when there is any
  const jinaDocument = (d) => {
    const urls = imagesOf(d);
    if (!urls.length) return d;
    const out = { image: urls.length === 1 ? urls[0] : urls };
    if (textOf(d)) out.text = textOf(d);
    return out;
  };

  function curl(path, payload, notes) {
    const lines = notes.map((n) => "# " + n);
    let cmd = "curl -s " + root + path + " \\\n  -H 'Content-Type: application/json'";
    if (config.auth) cmd += ' \\\n  -H "Authorization: Bearer $RERANKER_API_KEY"';
    lines.push(cmd + " \\\n  -d " + sh(json(payload)));
    return lines.join("\n");
  }

  // Fields the user changed from the defaults; each snippet adds those its API can carry.
  function extras(body) {
    const instruction = body.instruction !== undefined && body.instruction !== config.default_instruction ? body.instruction : undefined;
    const topN = Number.isInteger(body.top_n) && body.top_n > 0 ? body.top_n : undefined;
    return { instruction, topN, raw: !!body.raw_scores };
  }

  function snippetCurl(body) {
    const x = extras(body);
    const payload = { query: body.query, docs: strings(textOnly(body.documents)) };
    if (x.instruction !== undefined) payload.instruction = x.instruction;
    const notes = leftOut(body, "/v1/rank");
    if (x.topN) notes.push("/v1/rank returns every document, best first (it has no top_n)");
    if (x.raw) notes.push("/v1/rank scores are always P(yes) (it has no raw scores)");
    return curl("/v1/rank", payload, notes);
  }

  function snippetCohere(body) {
    const x = extras(body);
    const key = config.auth ? 'os.environ["RERANKER_API_KEY"]' : 'os.environ.get("RERANKER_API_KEY", "unused")';
    const lines = ["import os", "", "import cohere", ""];
    for (const note of leftOut(body, "Cohere v2")) lines.push("# " + note);
    if (!config.auth) lines.push("# auth is off on this server, but the SDK insists on a key");
    lines.push(
      "co = cohere.ClientV2(base_url=" + JSON.stringify(root) + ", api_key=" + key + ")",
      "response = co.rerank(",
      "    model=" + JSON.stringify(config.model || "qwen3-reranker") + ",",
      "    query=" + JSON.stringify(body.query) + ",",
      "    documents=[",
      ...strings(textOnly(body.documents)).map((d) => "        " + JSON.stringify(d) + ","),
      "    ],",
    );
    if (x.topN) lines.push("    top_n=" + x.topN + ",");
    const more = [];
    if (x.instruction !== undefined) more.push('"instruction": ' + JSON.stringify(x.instruction));
    if (x.raw) more.push('"raw_scores": True');
    if (more.length) {
      lines.push("    # extensions of this server, sent in the JSON body");
      lines.push('    request_options={"additional_body_parameters": {' + more.join(", ") + "}},");
    }
    lines.push(")", "for result in response.results:", "    print(result.index, result.relevance_score)");
    return lines.join("\n");
  }

  function snippetJina(body) {
    const x = extras(body);
    const payload = { model: config.model || "qwen3-reranker", query: body.query, documents: body.documents.map(jinaDocument) };
    if (x.topN) payload.top_n = x.topN;
    payload.return_documents = true;
    if (x.instruction !== undefined) payload.instruction = x.instruction;
    if (x.raw) payload.raw_scores = true;
    return curl("/v1/rerank", payload, []);
  }

  function snippetScore(body) {
    const x = extras(body);
    // with images: vLLM's queries/documents form, which takes {"content": [...]} documents
    const payload = textOnly(body.documents).length === body.documents.length
      ? { model: config.model || "qwen3-reranker", text_1: body.query, text_2: strings(body.documents) }
      : { model: config.model || "qwen3-reranker", queries: body.query, documents: body.documents };
    if (x.instruction !== undefined) payload.instruction = x.instruction;
    if (x.raw) payload.use_activation = false;
    const notes = ["vLLM's /score: one score per document, in input order" + (x.topN ? " (it has no top_n)" : "")];
    if (!config.score_route) notes.push("this server does not answer /score: send it to vLLM itself (its own port)");
    return curl("/score", payload, notes);
  }

  const SNIPPETS = { curl: snippetCurl, cohere: snippetCohere, jina: snippetJina, score: snippetScore };

  function renderSnippets() {
    const body = request();
    for (const [name, make] of Object.entries(SNIPPETS)) {
      $("snippet-" + name).textContent = make(body);
      $("snippet-" + name).hidden = name !== shown;
    }
    for (const tab of document.querySelectorAll("[data-snippet]")) {
      tab.setAttribute("aria-selected", String(tab.dataset.snippet === shown));
    }
  }

  async function copy() {
    const text = $("snippet-" + shown).textContent;
    let done = false;
    try {
      // the Clipboard API exists only in secure contexts (https, localhost)
      if (navigator.clipboard) { await navigator.clipboard.writeText(text); done = true; }
    } catch (e) { /* fall back below */ }
    if (!done) {
      const area = document.createElement("textarea");
      area.value = text;
      document.body.append(area);
      area.select();
      done = document.execCommand("copy");
      area.remove();
    }
    $("copied").textContent = done ? "copied" : "select the text and copy it";
    setTimeout(() => { $("copied").textContent = ""; }, 2000);
  }

  // --- image documents (a Qwen3-VL reranker) ----------------------------------------------------
  const imageFiles = (list) => Array.from(list || []).filter((f) => f.type.startsWith("image/"));

  function readAsDataURL(file) {
    return new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(reader.result);
      reader.onerror = () => reject(reader.error);
      reader.readAsDataURL(file);
    });
  }

  // Any image file is taken as it is: the server says what it refuses (type, size, pixels).
  async function addImages(files) {
    for (const file of files) {
      try {
        images.push({ name: file.name || "pasted image", url: await readAsDataURL(file) });
      } catch (e) {
        showError("Cannot read " + (file.name || "the image") + " (" + e.message + ").");
      }
    }
    renderImages();
    renderSnippets();
  }

  function renderImages() {
    const list = $("image-list");
    list.replaceChildren(...images.map((image, i) => {
      const li = document.createElement("li");
      const img = document.createElement("img");
      img.src = image.url;
      img.alt = image.name;
      const remove = document.createElement("button");
      remove.type = "button";
      remove.textContent = "remove";
      remove.addEventListener("click", () => { images.splice(i, 1); renderImages(); renderSnippets(); });
      li.append(img, cell("muted", image.name), remove);
      return li;
    }));
  }

  function acceptImages() {
    $("image-drop").hidden = false;
    $("image-files").addEventListener("change", () => {
      const files = imageFiles($("image-files").files);
      $("image-files").value = "";
      addImages(files);
    });
    // a pasted image (a screenshot, a copied picture) anywhere on the page; pasted text is left alone
    document.addEventListener("paste", (e) => {
      const files = imageFiles(e.clipboardData && e.clipboardData.files);
      if (files.length) { e.preventDefault(); addImages(files); }
    });
    const zone = $("input");
    const dragsFiles = (e) => e.dataTransfer && Array.from(e.dataTransfer.types || []).includes("Files");
    zone.addEventListener("dragover", (e) => {
      if (!dragsFiles(e)) return;
      e.preventDefault();
      zone.classList.add("dragging");
    });
    zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
    zone.addEventListener("drop", (e) => {
      zone.classList.remove("dragging");
      if (!dragsFiles(e)) return;
      e.preventDefault();
      addImages(imageFiles(e.dataTransfer.files));
    });
  }

  // --- start -----------------------------------------------------------------------------------
  async function start() {
    try {
      const r = await fetch(api("playground/config"), { cache: "no-store" });
      if (r.ok) config = Object.assign(config, await r.json());
    } catch (e) { /* the engine pill says the service cannot be reached */ }
    $("model").textContent = config.model ? "model: " + config.model : "";
    if (!$("instruction").value) $("instruction").value = config.default_instruction;
    $("key-row").hidden = !config.auth;
    if (config.images) acceptImages();
    renderSnippets();
    checkEngine();
  }

  $("rank").addEventListener("click", rank);
  $("query").addEventListener("keydown", (e) => { if (e.key === "Enter") rank(); });
  for (const id of ["query", "instruction", "documents", "top-n", "raw"]) {
    $(id).addEventListener("input", renderSnippets);
  }
  for (const tab of document.querySelectorAll("[data-snippet]")) {
    tab.addEventListener("click", () => { shown = tab.dataset.snippet; renderSnippets(); });
  }
  $("copy").addEventListener("click", copy);
  // The page signals when it is set up (tests and scripts wait for it).
  start().then(() => { document.body.dataset.ready = "true"; });
})();
