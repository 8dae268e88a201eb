() => {
  // Gradio 6.31's File component reads only dataTransfer.files, where a dropped folder is an empty
  // placeholder. This handler (run once on page load) catches drops on any `.ti-folder-drop`
  // component that contain a folder, walks the folders with webkitGetAsEntry/readEntries, keeps
  // the images, and hands them to the component's own hidden <input type=file> as if picked.
  // Drops without folders are left to Gradio untouched.
  if (window.tiFolderDrop) return;
  const IMAGE_RE = /\.(png|jpe?g|webp|bmp)$/i;
  const MAX_DEPTH = 16;

  const readBatch = (reader) => new Promise((resolve, reject) => reader.readEntries(resolve, reject));
  const entryFile = (entry) => new Promise((resolve, reject) => entry.file(resolve, reject));

  async function walk(entry, out, depth) {
    if (entry.isFile) {
      if (IMAGE_RE.test(entry.name)) out.push(await entryFile(entry));
    } else if (entry.isDirectory && depth < MAX_DEPTH) {
      const reader = entry.createReader();
      // readEntries returns at most ~100 entries per call: keep reading until it returns none.
      for (;;) {
        const batch = await readBatch(reader);
        if (!batch.length) break;
        for (const child of batch) await walk(child, out, depth + 1);
      }
    }
  }

  async function collect(entries) {
    const out = [];
    for (const entry of entries) await walk(entry, out, 0);
    out.sort((a, b) => a.name.localeCompare(b.name));
    return out;
  }

  function deliver(zone, files) {
    const input = zone.querySelector("input[type=file]");
    if (!input) return false;
    const dt = new DataTransfer();
    for (const f of files) dt.items.add(f);
    input.files = dt.files;
    input.dispatchEvent(new Event("change", { bubbles: true }));
    return true;
  }

  function note(zone, text) {
    let el = zone.querySelector(".ti-drop-note");
    if (!el) {
      el = document.createElement("div");
      el.className = "ti-drop-note";
      el.style.cssText = "padding:4px 8px;font-size:0.9em;opacity:0.8";
      zone.appendChild(el);
    }
    el.textContent = text;
  }

  async function handleEntries(zone, entries) {
    const files = await collect(entries);
    if (!files.length) {
      note(zone, "No images (.png .jpg .jpeg .webp .bmp) in the dropped folder.");
      return 0;
    }
    note(zone, `Uploading ${files.length} image(s) from the dropped folder…`);
    deliver(zone, files);
    // The upload ends when the component lists the files: then say so, instead of "Uploading…" forever.
    const last = files[files.length - 1].name;
    const started = Date.now();
    const watch = setInterval(() => {
      const listed = (zone.textContent || "").includes(last);
      if (listed || Date.now() - started > 600000) {
        clearInterval(watch);
        note(zone, listed ? `Added ${files.length} image(s) from the dropped folder.`
                          : "The upload did not finish; drop the folder again.");
      }
    }, 500);
    return files.length;
  }

  document.addEventListener(
    "drop",
    (e) => {
      const zone = e.target && e.target.closest ? e.target.closest(".ti-folder-drop") : null;
      if (!zone || !e.dataTransfer || !e.dataTransfer.items) return;
      // Entries must be taken while the event is being dispatched; the list is emptied after.
      const entries = Array.from(e.dataTransfer.items)
        .map((item) => (item.webkitGetAsEntry ? item.webkitGetAsEntry() : null))
        .filter(Boolean);
      if (!entries.some((entry) => entry.isDirectory)) return;
      e.preventDefault();
      e.stopPropagation();
      handleEntries(zone, entries);
    },
    true,
  );

  window.tiFolderDrop = { collect, deliver, handleEntries };
}
