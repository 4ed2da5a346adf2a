-- glia.plot -- loss curves as SVG pictures, written at the end of a run.
--
--   plot.loss_curve(path, {
--     series = { {name = "train", x = {...}, y = {...}}, {name = "val", x = ..., y = ...} },
--     title = "gpt on kjv", xlabel = "step", ylabel = "loss", logy = false, logx = false,
--     width = 800, height = 480,
--   }) -> true | nil, message
-- A series without x is plotted against 1..#y. Points whose x or y is NaN or
-- infinite (or <= 0 on a log scale) are left out and break the line there;
-- an empty series still gets its legend entry. A series with smooth = a
-- (0 <= a < 1) is drawn faintly as it is, and over it as an exponential
-- moving average with weight a on the past (for noisy per-step losses).
-- Series may set color = "#rrggbb". The second argument may also be the
-- list of series itself.
local floor, ceil, max, min, abs, huge = math.floor, math.ceil, math.max, math.min, math.abs,
  math.huge
local log = math.log
local log10 = math.log10 or function(v) return log(v, 10) end -- Lua 5.4 has no log10
local fmt = string.format
local concat = table.concat
local type, ipairs, tostring = type, ipairs, tostring
local error = require("glia.core").error -- blames the user's line, never the stdlib's
local io_open = io.open
local options = require "glia.options"

local plot = {}

local COLORS = { "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                 "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf" }
local FONT = "font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\""
local MARGIN = { left = 72, right = 24, top = 44, bottom = 56 }
local MAX_DOTS = 40 -- runs of at most this many points also show each point

local function finite(v) return type(v) == "number" and v == v and v ~= huge and v ~= -huge end

local function xml_escape(s)
  return (tostring(s):gsub("[&<>\"']", { ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;",
                                         ['"'] = "&quot;", ["'"] = "&#39;" }))
end

-- ======================================================= ticks

-- A "nice" step (1, 2 or 5 times a power of ten) giving about n ticks over span.
local function nice_step(span, n)
  local raw = span / n
  local p = 10 ^ floor(log10(raw))
  local m = raw / p
  return (m < 1.5 and 1 or m < 3.5 and 2 or m < 7.5 and 5 or 10) * p
end

-- Linear ticks covering [lo, hi]: the range widened to whole steps, the
-- tick values, and the decimals their labels need.
local function linear_ticks(lo, hi)
  local step = nice_step(hi - lo, 6)
  local a, b = floor(lo / step + 1e-9) * step, ceil(hi / step - 1e-9) * step
  local ticks = {}
  for i = 0, floor((b - a) / step + 0.5) do ticks[#ticks + 1] = a + i * step end
  return a, b, ticks, max(0, 0 - floor(log10(step) + 1e-9)) -- 0 - x: LuaJIT's -x can be -0
end

-- Log-scale ticks within [lo, hi] (both > 0): powers of ten, or 1-2-5, or
-- 1..9 times them, whichever first gives at least four ticks; failing that
-- (a range of less than a decade), linear ticks placed on the log axis.
local function log_ticks(lo, hi)
  for _, mantissas in ipairs({ { 1 }, { 1, 2, 5 }, { 1, 2, 3, 4, 5, 6, 7, 8, 9 } }) do
    local ticks = {}
    for e = floor(log10(lo)), ceil(log10(hi)) do
      for _, m in ipairs(mantissas) do
        local v = m * 10 ^ e
        if v >= lo * (1 - 1e-9) and v <= hi * (1 + 1e-9) then ticks[#ticks + 1] = v end
      end
    end
    if #ticks >= 4 then return ticks end
  end
  local _, _, ticks = linear_ticks(lo, hi)
  local inside = {}
  for _, v in ipairs(ticks) do if v >= lo and v <= hi then inside[#inside + 1] = v end end
  return inside
end

local function tick_label(v, decimals)
  if v == 0 then return "0" end
  local a = abs(v)
  if a >= 1e6 or a < 1e-4 then return (fmt("%.3g", v):gsub("e%+?(%-?)0*(%d)", "e%1%2")) end
  if decimals then return fmt("%." .. decimals .. "f", v) end
  return fmt("%g", v)
end

-- ======================================================= data

-- Each series as runs of finite points (a NaN breaks the line), its
-- smoothed runs when asked, and the data range (nil when no point is
-- drawable).
local function collect(series, logy, logx)
  local runs, smoothed, xlo, xhi, ylo, yhi = {}, {}, huge, -huge, huge, -huge
  for s, ser in ipairs(series) do
    local xs, ys, a = ser.x, ser.y or {}, ser.smooth
    local list, slist, run, srun, ema, k = {}, {}, nil, nil, 0, 0
    for i = 1, #ys do
      local x, y = xs and xs[i] or i, ys[i]
      if finite(x) and finite(y) and (not logy or y > 0) and (not logx or x > 0) then
        if not run then
          run, srun = {}, {}
          list[#list + 1], slist[#slist + 1] = run, srun
        end
        run[#run + 1] = { x, y }
        xlo, xhi, ylo, yhi = min(xlo, x), max(xhi, x), min(ylo, y), max(yhi, y)
        if a then
          ema, k = a * ema + (1 - a) * y, k + 1
          srun[#srun + 1] = { x, ema / (1 - a ^ k) } -- bias-corrected
        end
      else
        run = nil
      end
    end
    runs[s], smoothed[s] = list, a and slist or nil
  end
  if xlo > xhi then return runs, smoothed, nil end
  return runs, smoothed, { xlo, xhi, ylo, yhi }
end

-- Expands a degenerate range (one value) so that it has a width.
local function widen(lo, hi, logscale)
  if hi > lo then return lo, hi end
  if logscale then return lo / 2, hi * 2 end
  local d = lo == 0 and 1 or abs(lo) * 0.1
  return lo - d, hi + d
end

-- ======================================================= drawing

-- Pixel points of one run, merging points that land on the same pixel
-- column into its first, lowest, highest and last values.
local function run_path(run, px, py)
  local out, col, bucket = {}, nil, nil
  local function flush()
    if not bucket then return end
    local seen = {}
    for _, p in ipairs(bucket) do
      if not seen[p] then seen[p] = true out[#out + 1] = fmt("%.1f,%.1f", p[1], p[2]) end
    end
  end
  for _, pt in ipairs(run) do
    local p = { px(pt[1]), py(pt[2]) }
    local c = floor(p[1])
    if c ~= col then
      flush()
      col, bucket = c, { p, p, p, p }
    else
      if p[2] < bucket[2][2] then bucket[2] = p end
      if p[2] > bucket[3][2] then bucket[3] = p end
      bucket[4] = p
    end
  end
  flush()
  return out
end

local function svg(opts)
  local series = opts.series
  local W, H = opts.width or 800, opts.height or 480
  local logy, logx = opts.logy and true or false, opts.logx and true or false
  local L, R, T, B = MARGIN.left, W - MARGIN.right, MARGIN.top, H - MARGIN.bottom
  local runs, smoothed, range = collect(series, logy, logx)
  local xlo, xhi, ylo, yhi
  if range then
    xlo, xhi = widen(range[1], range[2], logx)
    ylo, yhi = widen(range[3], range[4], logy)
  else
    xlo, xhi, ylo, yhi = logx and 0.1 or 0, 1, logy and 0.1 or 0, 1
  end
  local xticks, xdec, yticks, ydec
  -- a log axis gets 4% of its decades as room at each end
  local function log_range(lo, hi)
    local pad = (log10(hi) - log10(lo)) * 0.04
    return 10 ^ (log10(lo) - pad), 10 ^ (log10(hi) + pad)
  end
  -- the pixel of v on an axis from lo (pixel a) to hi (pixel b)
  local function scale(lo, hi, a, b, logscale)
    if logscale then
      local l, h = log10(lo), log10(hi)
      return function(v) return a + (log10(v) - l) / (h - l) * (b - a) end
    end
    return function(v) return a + (v - lo) / (hi - lo) * (b - a) end
  end
  if logx then
    xlo, xhi = log_range(xlo, xhi)
    xticks = log_ticks(xlo, xhi)
  else
    xlo, xhi, xticks, xdec = linear_ticks(xlo, xhi)
  end
  if logy then
    ylo, yhi = log_range(ylo, yhi)
    yticks = log_ticks(ylo, yhi)
  else
    ylo, yhi, yticks, ydec = linear_ticks(ylo, yhi)
  end
  local px, py = scale(xlo, xhi, L, R, logx), scale(ylo, yhi, B, T, logy)

  local o = {}
  local function add(...) o[#o + 1] = fmt(...) end
  add('<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d">',
      W, H, W, H)
  add('<rect width="%d" height="%d" fill="#ffffff"/>', W, H)
  add('<g %s font-size="12" fill="#333333">', FONT)
  if opts.title then
    add('<text x="%.1f" y="26" text-anchor="middle" font-size="16" font-weight="bold">%s</text>',
        (L + R) / 2, xml_escape(opts.title))
  end
  -- grid and tick labels
  add('<g stroke="#e6e6e6" stroke-width="1">')
  for _, v in ipairs(xticks) do add('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d"/>', px(v), T, px(v), B) end
  for _, v in ipairs(yticks) do add('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f"/>', L, py(v), R, py(v)) end
  add('</g>')
  add('<g stroke="#333333" stroke-width="1">')
  for _, v in ipairs(xticks) do add('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d"/>', px(v), B, px(v), B + 5) end
  for _, v in ipairs(yticks) do add('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f"/>', L - 5, py(v), L, py(v)) end
  add('</g>')
  for _, v in ipairs(xticks) do
    add('<text x="%.1f" y="%d" text-anchor="middle">%s</text>', px(v), B + 19, tick_label(v, xdec))
  end
  for _, v in ipairs(yticks) do
    add('<text x="%d" y="%.1f" text-anchor="end">%s</text>', L - 8, py(v) + 4, tick_label(v, ydec))
  end
  add('<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#333333" stroke-width="1"/>',
      L, T, R - L, B - T)
  if opts.xlabel then
    add('<text x="%.1f" y="%d" text-anchor="middle" font-size="13">%s</text>', (L + R) / 2, H - 14,
        xml_escape(opts.xlabel))
  end
  if opts.ylabel then
    add('<text transform="translate(18 %.1f) rotate(-90)" text-anchor="middle" font-size="13">%s</text>',
        (T + B) / 2, xml_escape(opts.ylabel))
  end
  -- the curves, clipped to the plot area
  add('<clipPath id="plot-area"><rect x="%d" y="%d" width="%d" height="%d"/></clipPath>',
      L, T, R - L, B - T)
  add('<g clip-path="url(#plot-area)" fill="none" stroke-width="1.8" stroke-linejoin="round" stroke-linecap="round">')
  -- sparse runs (an evaluation every few hundred steps) also get a dot per point
  local function draw_runs(list, color, opacity)
    for _, run in ipairs(list) do
      local pts = run_path(run, px, py)
      if #pts > 1 then
        add('<polyline stroke="%s" stroke-opacity="%.2f" points="%s"/>', color, opacity,
            concat(pts, " "))
      end
      if #run <= MAX_DOTS then
        for _, pt in ipairs(pts) do
          local x, y = pt:match("([^,]+),(.+)")
          add('<circle cx="%s" cy="%s" r="2.5" fill="%s" fill-opacity="%.2f" stroke="none"/>',
              x, y, color, opacity)
        end
      end
    end
  end
  for s, list in ipairs(runs) do
    local color = series[s].color or COLORS[(s - 1) % #COLORS + 1]
    draw_runs(list, color, smoothed[s] and 0.25 or 1)
    if smoothed[s] then draw_runs(smoothed[s], color, 1) end
  end
  add('</g>')
  if not range then
    add('<text x="%.1f" y="%.1f" text-anchor="middle" fill="#999999">no data</text>',
        (L + R) / 2, (T + B) / 2)
  end
  -- legend, top right inside the plot
  if #series > 0 then
    local wmax = 0
    for _, ser in ipairs(series) do wmax = max(wmax, #tostring(ser.name or "")) end
    local lw, lh = 44 + wmax * 7, 8 + 18 * #series
    local lx, ly = R - lw - 10, T + 10
    add('<rect x="%d" y="%d" width="%d" height="%d" fill="#ffffff" fill-opacity="0.85" stroke="#cccccc"/>',
        lx, ly, lw, lh)
    for s, ser in ipairs(series) do
      local color = ser.color or COLORS[(s - 1) % #COLORS + 1]
      local y = ly + 4 + 18 * s - 6
      add('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="2.5"/>',
          lx + 8, y, lx + 30, y, color)
      add('<text x="%d" y="%d">%s</text>', lx + 36, y + 4, xml_escape(ser.name or ("series " .. s)))
    end
  end
  add('</g>')
  add('</svg>')
  return concat(o, "\n") .. "\n"
end

-- Writes the picture to path. Returns true, or nil and a message when the
-- file cannot be written; bad arguments raise.
function plot.loss_curve(path, opts)
  if type(path) ~= "string" then error("plot.loss_curve: path must be a string", 2) end
  if type(opts) ~= "table" then error("plot.loss_curve: expected a table of options", 2) end
  if opts[1] ~= nil or opts.series == nil then opts = { series = opts } end
  options.check("plot.loss_curve", opts,
                { "series", "title", "xlabel", "ylabel", "logy", "logx", "width", "height" })
  for i, ser in ipairs(opts.series) do
    if type(ser) ~= "table" or (ser.y ~= nil and type(ser.y) ~= "table")
        or (ser.x ~= nil and type(ser.x) ~= "table") then
      error(fmt("plot.loss_curve: series %d must be a table with lists x and y", i), 2)
    end
    options.check(fmt("plot.loss_curve: series %d", i), ser,
                  { "name", "x", "y", "smooth", "color" })
  end
  local f, err = io_open(path, "wb")
  if not f then return nil, "plot.loss_curve: " .. err end
  local ok, werr = f:write(svg(opts))
  f:close()
  if not ok then return nil, "plot.loss_curve: " .. tostring(werr) end
  return true
end

-- ===================================================== coloured text

-- Writes text as an SVG picture, each character on a background whose
-- shade says its value: plot.colored_text(path, {chars = {...}, values =
-- {...}, vmax = N, title = "...", legend = "..."}). values[i] in [0, vmax]
-- (nil: no background); newlines break lines, and lines wrap at `columns`
-- (100). Returns true, or nil and a message.
function plot.colored_text(path, opts)
  if type(path) ~= "string" then error("plot.colored_text: path must be a string", 2) end
  options.check("plot.colored_text", opts, { "chars", "values", "vmax", "title", "legend",
                                             "columns" })
  local chars, values, vmax = opts.chars, opts.values or {}, opts.vmax or 1
  if type(chars) ~= "table" then error("plot.colored_text: chars must be a list", 2) end
  local cols, cw, lh, x0, y0 = opts.columns or 100, 8.4, 20, 12, 52
  local o, rects, texts = {}, {}, {}
  local col, row = 0, 0
  -- white to dark orange as the value rises
  local function shade(v)
    local a = min(1, max(0, v / vmax))
    return fmt("rgb(%d,%d,%d)", floor(255 - 25 * a), floor(255 - 140 * a), floor(255 - 230 * a))
  end
  for i, ch in ipairs(chars) do
    if ch == "\n" then
      col, row = 0, row + 1
    else
      if col >= cols then col, row = 0, row + 1 end
      local x, y = x0 + col * cw, y0 + row * lh
      if values[i] then
        rects[#rects + 1] = fmt('<rect x="%.1f" y="%d" width="%.1f" height="%d" fill="%s"/>', x,
                                y - 14, cw, lh - 2, shade(values[i]))
      end
      texts[#texts + 1] = fmt('<tspan x="%.1f" y="%d">%s</tspan>', x, y,
                              ch == " " and "&#160;" or xml_escape(ch))
      col = col + 1
    end
  end
  local width, height = x0 * 2 + cols * cw, y0 + (row + 1) * lh + 36
  o[#o + 1] = fmt('<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
                  .. 'viewBox="0 0 %d %d">', width, height, width, height)
  o[#o + 1] = fmt('<rect width="%d" height="%d" fill="white"/>', width, height)
  if opts.title then
    o[#o + 1] = fmt('<text x="%d" y="24" font-size="15" %s>%s</text>', x0, FONT,
                    xml_escape(opts.title))
  end
  for _, r in ipairs(rects) do o[#o + 1] = r end
  o[#o + 1] = '<text font-family="DejaVu Sans Mono, monospace" font-size="14">'
  for _, t in ipairs(texts) do o[#o + 1] = t end
  o[#o + 1] = '</text>'
  -- the legend: one swatch per integer value
  local ly = height - 20
  for v = 0, vmax do
    o[#o + 1] = fmt('<rect x="%d" y="%d" width="18" height="14" fill="%s" stroke="#999"/>',
                    x0 + v * 44, ly - 11, shade(v))
    o[#o + 1] = fmt('<text x="%d" y="%d" font-size="12" %s>%d</text>', x0 + v * 44 + 22, ly, FONT, v)
  end
  if opts.legend then
    o[#o + 1] = fmt('<text x="%d" y="%d" font-size="12" %s>%s</text>', x0 + (vmax + 1) * 44 + 8,
                    ly, FONT, xml_escape(opts.legend))
  end
  o[#o + 1] = '</svg>'
  local f, err = io_open(path, "wb")
  if not f then return nil, "plot.colored_text: " .. err end
  local ok, werr = f:write(concat(o, "\n") .. "\n")
  f:close()
  if not ok then return nil, "plot.colored_text: " .. tostring(werr) end
  return true
end

return plot
