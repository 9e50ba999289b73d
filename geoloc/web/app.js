// The web demo: send a photo to /predict, draw the answer on an SVG map of France.
// Everything comes from this server (/map.json, /model, /predict): it works offline.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
// Metropolitan France and Corsica, in degrees; x is scaled by cos(mid latitude) so that the
// map keeps its shape (an equirectangular projection centred on France).
const VIEW = { west: -5.6, east: 10.0, south: 41.2, north: 51.3 };
const PX_PER_DEGREE = 70;
const X_SCALE = Math.cos(((VIEW.south + VIEW.north) / 2) * Math.PI / 180);
const LABELLED_CITIES = 20;  // data/cities.csv lists the largest first

const $ = (id) => document.getElementById(id);
let limits = { max_upload_bytes: Infinity, max_request_bytes: Infinity, max_views: Infinity };

function project(lat, lon) {
  return [(lon - VIEW.west) * X_SCALE * PX_PER_DEGREE, (VIEW.north - lat) * PX_PER_DEGREE];
}

function svgElement(name, attributes, parent) {
  const element = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
  parent.appendChild(element);
  return element;
}

function ringPath(ring) {  // GeoJSON ring: [[lon, lat], ...]
  return "M" + ring.map(([lon, lat]) => project(lat, lon).map((v) => v.toFixed(1)).join(","))
    .join("L") + "Z";
}

function drawBaseMap(data) {
  const [width, height] = project(VIEW.south, VIEW.east);
  $("map").setAttribute("viewBox", `0 0 ${width.toFixed(0)} ${height.toFixed(0)}`);
  for (const feature of data.outline.features) {
    const geometry = feature.geometry;
    const polygons = geometry.type === "Polygon" ? [geometry.coordinates] : geometry.coordinates;
    const path = polygons.map((rings) => rings.map(ringPath).join("")).join("");
    const kind = feature.properties.focus ? "land france" : "land";
    const land = svgElement("path", { d: path, class: kind, "fill-rule": "evenodd" }, $("base"));
    svgElement("title", {}, land).textContent = feature.properties.name;
  }
  data.cities.forEach((city, index) => {
    const [x, y] = project(city.lat, city.lon);
    const dot = svgElement("circle", { cx: x, cy: y, r: 2, class: "city" }, $("cities"));
    svgElement("title", {}, dot).textContent = city.name;
    if (index < LABELLED_CITIES) {
      svgElement("text", { x: x + 3, y: y - 3, class: "city-name" }, $("cities"))
        .textContent = city.name;
    }
  });
}

function drawPrediction(answer) {
  $("cells").replaceChildren();
  $("marker").replaceChildren();
  const best = answer.top[0].probability || 1;
  for (const cell of answer.top) {
    const points = cell.boundary.map(([lat, lon]) => project(lat, lon).join(",")).join(" ");
    // Opacity relative to the best cell, so that a flat distribution still shows its ranking.
    const opacity = (0.15 + 0.6 * cell.probability / best).toFixed(3);
    const hexagon = svgElement("polygon", { points, class: "cell", "fill-opacity": opacity,
      "data-cell": cell.cell }, $("cells"));
    svgElement("title", {}, hexagon).textContent =
      `cell ${cell.cell}: ${(100 * cell.probability).toFixed(1)}%`;
  }
  const [x, y] = project(answer.lat, answer.lon);
  const marker = svgElement("g", { id: "prediction-point" }, $("marker"));
  svgElement("circle", { cx: x, cy: y, r: 9, class: "point-ring" }, marker);
  svgElement("circle", { cx: x, cy: y, r: 3, class: "point" }, marker);
  svgElement("title", {}, marker).textContent =
    `predicted position ${answer.lat.toFixed(5)}, ${answer.lon.toFixed(5)}`;
}

function showAnswer(answer) {
  $("lat").textContent = answer.lat.toFixed(5);
  $("lon").textContent = answer.lon.toFixed(5);
  $("near").textContent = answer.city === null
    ? "-" : `${answer.city}, ${answer.city_km.toFixed(1)} km away`;
  $("cell").textContent = answer.cell;
  $("confidence").textContent = `${(100 * answer.confidence).toFixed(1)}%`;
  $("answered").textContent = answer.views > 1
    ? `in mode ${answer.mode}, ${answer.views} views of one place together`
    : `in mode ${answer.mode}`;
  $("note").textContent = answer.note || "";
  $("note").hidden = !answer.note;
  $("osm").href = answer.osm_url;
  const rows = answer.top.map((cell, rank) => {
    const row = document.createElement("tr");
    for (const text of [rank + 1, cell.cell, `${(100 * cell.probability).toFixed(1)}%`,
      cell.lat.toFixed(5), cell.lon.toFixed(5)]) {
      row.appendChild(document.createElement("td")).textContent = text;
    }
    return row;
  });
  $("top").tBodies[0].replaceChildren(...rows);
  drawPrediction(answer);
  const result = $("result");
  result.dataset.lat = answer.lat;
  result.dataset.lon = answer.lon;
  result.dataset.state = "done";
  result.hidden = false;
}

const megabytes = (bytes) => `${Number((bytes / 1e6).toPrecision(3))} MB`;

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").classList.toggle("error", Boolean(isError));
  if (isError) $("result").dataset.state = "error";
}

// Refuse here what the server would refuse for its size, before uploading it.
function tooLarge(files) {
  if (files.length > limits.max_views) {
    return `${files.length} photos; the limit is ${limits.max_views} views of one place.`;
  }
  const big = files.find((file) => file.size > limits.max_upload_bytes);
  if (big) {
    return `This photo is ${megabytes(big.size)}; the limit is ` +
      `${megabytes(limits.max_upload_bytes)}.`;
  }
  const total = files.reduce((sum, file) => sum + file.size, 0);
  if (total > limits.max_request_bytes) {
    return `These photos are ${megabytes(total)} together; the limit is ` +
      `${megabytes(limits.max_request_bytes)}.`;
  }
  return null;
}

async function locate(fileList) {
  const files = Array.from(fileList || []);
  if (!files.length) return setStatus("Choose a photo first.", true);
  const refusal = tooLarge(files);
  if (refusal) return setStatus(refusal, true);
  const what = files.length > 1 ? `${files.length} views of one place` : files[0].name;
  $("preview").src = URL.createObjectURL(files[0]);
  $("preview").hidden = false;
  $("result").dataset.state = "busy";
  setStatus(`Locating ${what}…`, false);
  const form = new FormData();
  for (const file of files) form.append("image", file);
  form.append("top_k", $("top-k").value);
  try {
    const response = await fetch("/predict", { method: "POST", body: form });
    const body = await response.json();
    if (!response.ok) return setStatus(`Refused (${response.status}): ${body.detail}`, true);
    showAnswer(body);
    setStatus(`Located ${what}.`, false);
  } catch (error) {
    setStatus(`The server did not answer: ${error.message}`, true);
  }
}

function listenForPhotos() {
  const input = $("photo");
  const zone = $("dropzone");
  input.addEventListener("change", () => locate(input.files));
  $("upload").addEventListener("submit", (event) => {
    event.preventDefault();
    locate(input.files);
  });
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    if (event.dataTransfer.files.length) locate(event.dataTransfer.files);
  });
}

async function start() {
  listenForPhotos();
  try {
    const [baseMap, model] = await Promise.all(
      ["/map.json", "/model"].map((url) => fetch(url).then((r) => r.json())));
    limits = model.limits;
    drawBaseMap(baseMap);
    document.body.dataset.ready = "true";
  } catch (error) {
    setStatus(`Could not load the map: ${error.message}`, true);
  }
}

start();
