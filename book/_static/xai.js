/* The book's interactive figures, citation cards and value cards. No dependencies, nothing fetched.
 * Figures are rendered complete on the server (real <img alt>, captions); this only swaps what they
 * show when a reader moves a control. */
(function () {
  "use strict";

  /* sphinx-book-theme hides the in-page TOC column while margin notes are on screen and assumes that
   * column exists; this book has none (the margin is for notes), so give its script an empty one.
   * This file is deferred, so it runs before the theme's DOMContentLoaded handlers. */
  if (!document.querySelector("div.bd-sidebar-secondary")) {
    var stub = document.createElement("div");
    stub.className = "bd-sidebar-secondary";
    stub.hidden = true;
    document.body.appendChild(stub);
  }

  function readData(root) {
    var el = root.querySelector("script.xai-data");
    return el ? JSON.parse(el.textContent) : null;
  }

  function setImage(img, rec) {
    img.src = rec.src;
    img.alt = rec.alt;
    img.width = rec.w;
    img.height = rec.h;
    img.classList.toggle("xai-pixel", !!rec.pixel);
  }

  function matches(rec, want) {
    for (var k in want) {
      if (Object.prototype.hasOwnProperty.call(want, k) && rec.k[k] !== want[k]) return false;
    }
    return true;
  }

  /* Controls: radio groups, selects and sliders, each bound to one key of the records. */
  function readControls(root) {
    var state = {};
    root.querySelectorAll(".xai-controls [data-axis]").forEach(function (c) {
      var axis = c.getAttribute("data-axis");
      if (c.tagName === "FIELDSET") {
        var on = c.querySelector("input:checked");
        if (on) state[axis] = on.value;
      } else if (c.type === "range") {
        state[axis] = JSON.parse(c.getAttribute("data-stops"))[+c.value].v;
      } else {
        state[axis] = c.value;
      }
    });
    return state;
  }

  function writeControls(root, state) {
    root.querySelectorAll(".xai-controls [data-axis]").forEach(function (c) {
      var axis = c.getAttribute("data-axis");
      if (!(axis in state)) return;
      if (c.tagName === "FIELDSET") {
        c.querySelectorAll("input").forEach(function (i) { i.checked = i.value === state[axis]; });
      } else if (c.type === "range") {
        var stops = JSON.parse(c.getAttribute("data-stops"));
        for (var i = 0; i < stops.length; i++) if (stops[i].v === state[axis]) c.value = i;
        var label = stops[+c.value].label;
        c.setAttribute("aria-valuetext", label);
        var out = c.parentNode.querySelector("output");
        if (out) out.textContent = label;
      } else {
        c.value = state[axis];
      }
    });
  }

  /* A control moved to a value that has no record with the others: take the other keys from the
   * first record that has the new value, so the figure never goes blank. */
  function settle(records, state, changed) {
    if (records.some(function (r) { return matches(r, state); })) return state;
    var keep = {};
    keep[changed] = state[changed];
    var r = records.find(function (x) { return matches(x, keep); });
    if (!r) return state;
    var next = {};
    for (var k in state) next[k] = r.k[k];
    return next;
  }

  function onControls(root, handler) {
    root.querySelectorAll(".xai-controls [data-axis]").forEach(function (c) {
      var axis = c.getAttribute("data-axis");
      c.addEventListener(c.type === "range" ? "input" : "change", function () { handler(axis); });
    });
  }

  function initExplorer(root) {
    var data = readData(root);
    if (!data) return;
    var grid = root.querySelector(".xai-grid");
    var rowKey = grid.getAttribute("data-row");
    var colKey = grid.getAttribute("data-col");
    function render(changed) {
      var state = readControls(root);
      if (changed) state = settle(data.records, state, changed);
      writeControls(root, state);
      grid.querySelectorAll(".xai-cell").forEach(function (cell) {
        var want = Object.assign({}, state);
        if (rowKey) want[rowKey] = cell.getAttribute("data-rv");
        if (colKey) want[colKey] = cell.getAttribute("data-cv");
        var rec = data.records.find(function (r) { return matches(r, want); });
        var img = cell.querySelector("img");
        var note = cell.querySelector(".xai-note");
        if (!rec) {
          cell.classList.add("xai-missing");
          if (img) img.hidden = true;
          if (note) note.textContent = "";
          return;
        }
        if (!img) {
          img = document.createElement("img");
          img.decoding = "async";
          cell.textContent = "";
          cell.appendChild(img);
          note = document.createElement("p");
          note.className = "xai-note";
          cell.appendChild(note);
        }
        cell.classList.remove("xai-missing");
        img.hidden = false;
        setImage(img, rec);
        note.textContent = rec.note || "";
      });
      root.setAttribute("data-state", JSON.stringify(state));
    }
    onControls(root, render);
  }

  /* Grids of image buttons (channels, Building Blocks positions): hovering, focusing or clicking one
   * shows its item; arrow keys move by one and by a row, Home and End to the ends. */
  function showOn(button, show) {
    var i = +button.getAttribute("data-i");
    ["mouseenter", "focus", "click"].forEach(function (ev) { button.addEventListener(ev, function () { show(i); }); });
  }

  function gridButton(className, i, image, show) {
    var b = document.createElement("button");
    b.type = "button";
    b.className = className;
    b.setAttribute("data-i", i);
    var img = document.createElement("img");
    img.decoding = "async";
    setImage(img, image);
    b.appendChild(img);
    showOn(b, show);
    return b;
  }

  function arrowKeys(grid, selector, columns) {
    grid.addEventListener("keydown", function (ev) {
      var buttons = Array.prototype.slice.call(grid.querySelectorAll(selector));
      var at = buttons.indexOf(document.activeElement);
      if (at < 0) return;
      var cols = columns();
      var step = { ArrowRight: 1, ArrowLeft: -1, ArrowDown: cols, ArrowUp: -cols }[ev.key];
      if (ev.key === "Home") step = -at;
      if (ev.key === "End") step = buttons.length - 1 - at;
      if (step === undefined) return;
      ev.preventDefault();
      buttons[Math.max(0, Math.min(buttons.length - 1, at + step))].focus();
    });
  }

  function initChannels(root) {
    var data = readData(root);
    if (!data) return;
    var grid = root.querySelector(".xai-channel-grid");
    var detail = root.querySelector(".xai-channel-detail");
    var big = detail.querySelector(".xai-channel-big");
    var note = detail.querySelector(".xai-note");
    var exemplars = detail.querySelector(".xai-exemplars");
    var link = detail.querySelector(".xai-channel-link");

    function show(i) {
      var rec = data.records[i];
      setImage(big, rec);
      note.textContent = rec.note;
      if (link) {
        link.parentNode.hidden = !rec.link;
        if (rec.link) link.href = rec.link;
      }
      exemplars.textContent = "";
      rec.exemplars.forEach(function (e) {
        var img = document.createElement("img");
        img.decoding = "async";
        setImage(img, e);
        exemplars.appendChild(img);
      });
      grid.querySelectorAll(".xai-channel").forEach(function (b) {
        var on = +b.getAttribute("data-i") === i;
        b.classList.toggle("xai-active", on);
        b.setAttribute("aria-pressed", on ? "true" : "false");
      });
    }

    function build(state) {
      grid.textContent = "";
      data.records.forEach(function (rec, i) {
        if (matches(rec, state)) grid.appendChild(gridButton("xai-channel", i, rec, show));
      });
      var first = grid.querySelector(".xai-channel");
      if (first) show(+first.getAttribute("data-i"));
    }

    grid.querySelectorAll(".xai-channel").forEach(function (b) { showOn(b, show); });
    arrowKeys(grid, ".xai-channel", function () {
      return getComputedStyle(grid).gridTemplateColumns.split(" ").length || 1;
    });
    onControls(root, function (changed) {
      var state = settle(data.records, readControls(root), changed);
      writeControls(root, state);
      build(state);
      root.setAttribute("data-state", JSON.stringify(state));
    });
  }

  /* Building Blocks: a grid of positions; hovering, focusing or clicking one shows its dictionary entry
   * (and marks it on the photo); pickers switch the record (photo, layer). */
  function initBlocks(root) {
    var data = readData(root);
    if (!data) return;
    var grid = root.querySelector(".xai-blocks-grid");
    var detail = root.querySelector(".xai-blocks-detail");
    var rec = data.records[0];

    function entryImage(c) {
      var fig = document.createElement("figure");
      fig.className = "xai-dict-entry";
      var img = document.createElement("img");
      img.decoding = "async";
      setImage(img, c);
      var cap = document.createElement("figcaption");
      cap.textContent = c.label;
      fig.appendChild(img);
      fig.appendChild(cap);
      return fig;
    }

    function show(i) {
      var e = rec.entries[i];
      detail.querySelector(".xai-note").textContent = e.note;
      var dict = detail.querySelector(".xai-dictionary");
      dict.textContent = "";
      e.channels.forEach(function (c) { dict.appendChild(entryImage(c)); });
      var box = detail.querySelector(".xai-blocks-box");
      if (box) {
        var r = Math.floor(i / rec.cols), c = i % rec.cols;
        box.style.left = (100 * c / rec.cols) + "%";
        box.style.top = (100 * r / rec.rows) + "%";
        box.style.width = (100 / rec.cols) + "%";
        box.style.height = (100 / rec.rows) + "%";
      }
      grid.querySelectorAll(".xai-tile").forEach(function (b) {
        var on = +b.getAttribute("data-i") === i;
        b.classList.toggle("xai-active", on);
        b.setAttribute("aria-pressed", on ? "true" : "false");
      });
      root.setAttribute("data-position", String(i));
    }

    function build() {
      grid.textContent = "";
      grid.style.setProperty("--xai-cols", rec.cols);
      rec.tiles.forEach(function (t, i) { grid.appendChild(gridButton("xai-tile", i, t, show)); });
      var photo = detail.querySelector(".xai-blocks-photo img");
      if (photo && rec.photo) setImage(photo, rec.photo);
      show(0);
    }

    grid.querySelectorAll(".xai-tile").forEach(function (b) { showOn(b, show); });
    arrowKeys(grid, ".xai-tile", function () { return rec.cols; });
    onControls(root, function (changed) {
      var state = settle(data.records, readControls(root), changed);
      writeControls(root, state);
      rec = data.records.find(function (r) { return matches(r, state); }) || rec;
      build();
      root.setAttribute("data-state", JSON.stringify(state));
    });
  }

  /* Hover cards: citations (the entry sphinxcontrib-bibtex puts in the link's title) and bound
   * values (the reference they were read from). Shown on hover and keyboard focus; Esc hides. */
  var card = null;
  var cardOwner = null;

  function showCard(owner, html) {
    if (!card) {
      card = document.createElement("div");
      card.className = "xai-card";
      card.id = "xai-card";
      card.setAttribute("role", "tooltip");
      document.body.appendChild(card);
    }
    card.innerHTML = html;
    card.hidden = false;
    cardOwner = owner;
    owner.setAttribute("aria-describedby", "xai-card");
    var r = owner.getBoundingClientRect();
    var width = Math.min(384, window.innerWidth - 16);
    card.style.maxWidth = width + "px";
    var left = Math.max(8, Math.min(window.scrollX + r.left, window.scrollX + window.innerWidth - width - 8));
    card.style.left = left + "px";
    card.style.top = window.scrollY + r.bottom + 6 + "px";
  }

  function hideCard() {
    if (card) card.hidden = true;
    if (cardOwner) cardOwner.removeAttribute("aria-describedby");
    cardOwner = null;
  }

  function escapeHtml(s) {
    return s.replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
    });
  }

  function cardFor(el, html) {
    el.addEventListener("mouseenter", function () { showCard(el, html); });
    el.addEventListener("focus", function () { showCard(el, html); });
    el.addEventListener("mouseleave", hideCard);
    el.addEventListener("blur", hideCard);
  }

  /* The Microscope: a link per unit over its sprite sheet. The unit a hash names (on load and on every
   * hash change), or one clicked, focused or asked for by layer and channel, opens in the detail: the
   * sheet as a background moved to its tile, and its exemplars, whose sheet is fetched only now. */
  function initMicroscope(root) {
    var data = readData(root);
    if (!data) return;
    var detail = root.querySelector(".xai-microscope-detail");
    var big = detail.querySelector(".xai-unit-big");
    var note = detail.querySelector(".xai-unit-note");
    var hint = detail.querySelector(".xai-unit-hint");
    var strip = detail.querySelector(".xai-unit-exemplars");
    var sources = detail.querySelector(".xai-unit-sources");
    var link = detail.querySelector(".xai-unit-link");
    var form = root.querySelector(".xai-microscope-search");
    var layerSelect = form.querySelector("select[name=layer]");
    var channelInput = form.querySelector("input[name=channel]");
    var status = form.querySelector(".xai-microscope-status");
    var byAnchor = {};
    data.layers.forEach(function (L, l) {
      L.anchors.forEach(function (a, c) { byAnchor[a] = [l, c]; });
    });

    function pct(i, n) { return n <= 1 ? "0%" : (100 * i / (n - 1)) + "%"; }

    function tile(el, src, cols, rows, q, r) {
      el.style.backgroundImage = "url('" + src.replace(/'/g, "%27") + "')";
      el.style.backgroundSize = (cols * 100) + "% " + (rows * 100) + "%";
      el.style.backgroundPosition = pct(q, cols) + " " + pct(r, rows);
    }

    function open(l, c) {
      var L = data.layers[l];
      var s = null;
      L.sheets.forEach(function (x) { if (c >= x.first && c < x.first + x.count) s = x; });
      if (!s) return;
      var j = c - s.first;
      var unit = document.getElementById(L.anchors[c]);
      var label = unit ? unit.getAttribute("aria-label") : L.layer + " channel " + c;
      tile(big, s.src, L.cols, s.rows, j % L.cols, Math.floor(j / L.cols));
      big.classList.toggle("xai-pixel", !!s.pixel);
      big.setAttribute("aria-label", label);
      note.textContent = label + ": final objective " + L.values[c].toPrecision(3);
      tile(strip, s.ex, 1, s.count, 0, j);
      strip.classList.toggle("xai-pixel", !!s.pixel);
      strip.style.setProperty("--xai-k", L.k);
      strip.hidden = false;
      hint.hidden = true;
      sources.textContent = "";
      var said = [];
      L.sources[c].forEach(function (src, i) {
        var li = document.createElement("li");
        var lab = L.labels[c][i];
        li.textContent = src + (lab ? " (" + lab + ")" : "") + ": " + L.exvalues[c][i].toPrecision(3);
        sources.appendChild(li);
        said.push(src + (lab ? " (" + lab + ")" : ""));
      });
      strip.setAttribute("aria-label", "The " + L.k + " dataset exemplars that excite " + label +
        " most, strongest first: " + said.join(", "));
      link.href = "#" + L.anchors[c];
      link.textContent = "Link to this unit: #" + L.anchors[c];
      root.querySelectorAll(".xai-unit.xai-active").forEach(function (a) {
        a.classList.remove("xai-active");
        a.removeAttribute("aria-current");
      });
      if (unit) {
        unit.classList.add("xai-active");
        unit.setAttribute("aria-current", "true");
      }
      layerSelect.value = String(l);
      channelInput.max = L.units - 1;
      channelInput.value = c;
      status.textContent = "";
      root.setAttribute("data-open", L.anchors[c]);
    }

    function fromHash() {
      var id = decodeURIComponent(location.hash.slice(1));
      if (Object.prototype.hasOwnProperty.call(byAnchor, id)) open(byAnchor[id][0], byAnchor[id][1]);
    }

    root.querySelectorAll(".xai-unit").forEach(function (a) {
      var l = +a.getAttribute("data-l"), c = +a.getAttribute("data-c");
      a.addEventListener("click", function () { open(l, c); });
      a.addEventListener("focus", function () { open(l, c); });
    });
    layerSelect.addEventListener("change", function () {
      channelInput.max = data.layers[+layerSelect.value].units - 1;
    });
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var L = data.layers[+layerSelect.value];
      var c = Number(channelInput.value);
      if (channelInput.value === "" || !Number.isInteger(c) || c < 0 || c >= L.units) {
        status.textContent = L.layer + " has channels 0 to " + (L.units - 1) + ".";
        return;
      }
      var anchor = L.anchors[c];
      if (decodeURIComponent(location.hash.slice(1)) === anchor) open(+layerSelect.value, c);
      else location.hash = anchor;  // hashchange opens it; the browser scrolls to it
      var unit = document.getElementById(anchor);
      if (unit) unit.scrollIntoView({ block: "center" });
    });
    window.addEventListener("hashchange", fromHash);
    fromHash();
  }

  function initCitations() {
    document.querySelectorAll("a[title]").forEach(function (a) {
      var label = a.closest(".citation-ref, span[id^='id']");
      var href = a.getAttribute("href") || "";
      if (!label && !/(^|\/)references\.html#/.test(href)) return;
      var entry = a.getAttribute("title");
      a.removeAttribute("title");  // our card replaces the browser's tooltip
      a.classList.add("xai-cite");
      cardFor(a, '<p class="xai-card-kicker">Reference</p><p>' + escapeHtml(entry) + "</p>");
    });
  }

  function initValues() {
    document.querySelectorAll(".xai-res[data-ref]").forEach(function (v) {
      v.tabIndex = 0;
      cardFor(v, '<p class="xai-card-kicker">Computed value</p><p>read from <code>' +
        escapeHtml(v.getAttribute("data-ref")) + "</code> when this page was built</p>");
    });
  }

  /* Screen-width figures reach from the text column to the right edge of the window. */
  function fitScreenFigures() {
    document.querySelectorAll(".xai-screen").forEach(function (f) {
      var parent = f.parentElement.getBoundingClientRect();
      var room = document.documentElement.clientWidth - parent.left - 16;
      f.style.setProperty("--xai-screen-width", Math.max(parent.width, room) + "px");
    });
  }

  function init() {
    document.querySelectorAll("[data-xai=explorer]").forEach(initExplorer);
    document.querySelectorAll("[data-xai=channels]").forEach(initChannels);
    document.querySelectorAll("[data-xai=blocks]").forEach(initBlocks);
    document.querySelectorAll("[data-xai=microscope]").forEach(initMicroscope);
    initCitations();
    initValues();
    fitScreenFigures();
    window.addEventListener("resize", fitScreenFigures);
    document.addEventListener("keydown", function (ev) { if (ev.key === "Escape") hideCard(); });
    document.documentElement.classList.add("xai-js");
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
