// eic report's page script: draws the image lists from the page's JSON (never as HTML: text and attributes only),
// opens the lightbox, shows a confusion-matrix cell's images, sorts the tables. No request leaves the page.
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("eic-data").textContent);
  var box = document.getElementById("lightbox");
  var lastFocus = null;

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function picture(index, alt) {
    var img = el("img");
    if (typeof index === "number" && index >= 0 && index < data.images.length) img.src = data.images[index];
    img.alt = alt;
    return img;
  }

  function link(url, text) {
    // Only the pages eic builds: a record on europeana.eu.
    if (typeof url !== "string" || url.indexOf("https://www.europeana.eu/item/") !== 0) return null;
    var a = el("a", "", text);
    a.href = url;
    a.target = "_blank";
    a.rel = "noopener noreferrer";
    return a;
  }

  function card(n) {
    var item = data.items[n];
    var fig = el("figure");
    var button = el("button", "thumb" + (item.state ? " " + item.state : ""));
    button.type = "button";
    button.setAttribute("aria-label", "open " + item.alt);
    if (item.img === null) button.append(el("span", "empty", "no image"));
    else button.append(picture(item.img, item.alt));
    button.addEventListener("click", function () { openBox(n, button); });
    fig.append(button);
    var caption = el("figcaption", "", item.label);
    var page = link(item.url, "record page");
    if (page) { caption.append(el("br")); caption.append(page); }
    fig.append(caption);
    return fig;
  }

  function fill(target, name) {
    var list = data.lists[name] || [];
    if (!list.length) { target.replaceChildren(el("p", "empty", "no images")); return; }
    target.replaceChildren.apply(target, list.map(card));
  }

  function openBox(n, from) {
    var item = data.items[n];
    lastFocus = from || null;
    var body = box.querySelector(".body");
    var views = el("div", "views");
    if (item.img !== null) views.append(picture(item.img, item.alt));
    if (item.cam !== null) views.append(picture(item.cam, "Grad-CAM heatmap of " + item.alt));
    body.replaceChildren(views, el("p", "", item.title));
    var page = link(item.url, "open the record on europeana.eu");
    if (page) { var p = el("p"); p.append(page); body.append(p); }
    if (typeof box.showModal === "function") box.showModal(); else box.setAttribute("open", "");
    box.querySelector(".close").focus();
  }

  function closeBox() {
    if (typeof box.close === "function") box.close(); else box.removeAttribute("open");
  }

  box.querySelector(".close").addEventListener("click", closeBox);
  box.addEventListener("keydown", function (event) { if (event.key === "Escape") { event.preventDefault(); closeBox(); } });
  box.addEventListener("close", function () { if (lastFocus) lastFocus.focus(); });
  box.addEventListener("click", function (event) { if (event.target === box) closeBox(); });

  document.querySelectorAll("[data-list]").forEach(function (target) { fill(target, target.getAttribute("data-list")); });

  document.querySelectorAll("a.cell").forEach(function (a) {
    a.addEventListener("click", function (event) {
      event.preventDefault();
      var panel = document.getElementById(a.getAttribute("data-panel"));
      panel.querySelector("h3").textContent = a.getAttribute("data-title");
      fill(panel.querySelector(".thumbs"), a.getAttribute("data-cell"));
      panel.hidden = false;
      panel.focus();
    });
  });

  document.querySelectorAll("table.sortable").forEach(function (table) {
    var heads = table.querySelectorAll("th");
    heads.forEach(function (th, column) {
      var button = th.querySelector("button");
      if (!button) return;
      button.addEventListener("click", function () {
        var ascending = th.getAttribute("aria-sort") !== "ascending";
        heads.forEach(function (other) { other.setAttribute("aria-sort", "none"); });
        th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = a.cells[column].getAttribute("data-v"), y = b.cells[column].getAttribute("data-v");
          var nx = parseFloat(x), ny = parseFloat(y);
          var order = (isNaN(nx) || isNaN(ny)) ? String(x).localeCompare(String(y)) : nx - ny;
          return ascending ? order : -order;
        });
        rows.forEach(function (row) { body.append(row); });
      });
    });
  });
})();
