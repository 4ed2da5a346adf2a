-- t/progress.t -- glia.progress (the bar on a terminal and in a log, the CSV
-- training log) and glia.plot (the SVG loss curve). Time comes from a fake
-- clock, so nothing here depends on how fast the machine is.
local t = require "t.tap"
local glia = require "glia"
local progress = require "glia.progress"
local plot = require "glia.plot"
local u = require "t.util"

local fmt = string.format
local tmp = fmt("%s/glia-progress-%d", os.getenv("TMPDIR") or "/tmp", math.random(1, 1e9))
local slurp = u.slurp
local function lines(s) local l = {} for x in s:gmatch("([^\n]*)\n") do l[#l + 1] = x end return l end
local function count(s, pat) return select(2, s:gsub(pat, "")) end

-- A bar writing to a file, with time under the test's control.
local now = 0
local function clock() return now end
local function file_bar(path, opts)
  local out = assert(io.open(path, "wb"))
  opts.out, opts.clock = out, clock
  return progress.bar(opts), out
end

-- ======================================================= plain lines

t.is(type(glia.isatty(1)), "boolean", "glia.isatty returns a boolean")
t.is(glia.isatty(-1), false, "an invalid descriptor is not a terminal")
local logf = io.open(tmp .. ".none", "wb")
local auto = progress.bar{ total = 10, out = logf }
t.is(auto.tty, false, "a bar writing to a file detects that it is not a terminal")
logf:close()
os.remove(tmp .. ".none")

now = 0
local bar, out = file_bar(tmp .. ".log", { total = 100, desc = "train", every_s = math.huge })
for step = 1, 100 do
  now = step * 0.5
  bar:update(step, { loss = 2 })
end
bar:close()
out:close()
local text = slurp(tmp .. ".log")
local l = lines(text)
t.is(#l, 20, "without a terminal a bar of 100 steps prints 20 lines")
t.is(l[1], "train  5/100    5%  2.0 it/s  ETA 0:48  loss 2.0000",
     "a plain line shows desc, step/total, percent, rate, ETA and loss")
t.is(l[20], "train  100/100  100%  2.0 it/s  in 0:50  loss 2.0000",
     "the last line shows the elapsed time instead of an ETA")
t.ok(not text:find("\r", 1, true) and not text:find("\27", 1, true),
     "plain lines carry no carriage returns or escape codes")

now = 0
bar, out = file_bar(tmp .. ".log", { total = 100, every_s = math.huge })
for step = 1, 3 do bar:update(step, { loss = 1 + step, lr = 0.001 }) end
bar:close()
out:close()
l = lines(slurp(tmp .. ".log"))
t.is(#l, 1, "close prints the final state when the last step has no line yet")
t.ok(l[1] and l[1]:find("^3/100") and l[1]:find("lr 0.0010", 1, true),
     "extra metrics are shown after the loss")
local ema = (0.02 * 0.98 * 0.98 * 2 + 0.02 * 0.98 * 3 + 0.02 * 4) / (1 - 0.98 ^ 3)
t.ok(l[1] and l[1]:find(fmt("loss %.4f", ema), 1, true),
     "the loss shown is the bias-corrected moving average")

now = 0
bar, out = file_bar(tmp .. ".log", { desc = "eval", every_s = 5 })
for step = 1, 40 do
  now = step
  bar:update(nil, { loss = 0.5 })
end
bar:close()
out:close()
l = lines(slurp(tmp .. ".log"))
t.is(#l, 8, "with no total a plain line appears every every_s seconds")
t.is(l[1], "eval  5  1.0 it/s  0:05  loss 0.5000", "a bar without total shows step, rate and elapsed time")

now = 0
bar, out = file_bar(tmp .. ".log", { total = 100, every_s = math.huge })
bar:update(2, { loss = 1 })
bar:print("val loss: 1.234")
bar:close()
out:close()
l = lines(slurp(tmp .. ".log"))
t.is(l[1], "val loss: 1.234", "bar:print writes its own line")

-- ======================================================= terminal

now = 0
bar, out = file_bar(tmp .. ".tty", { total = 100, desc = "train", tty = true })
for step = 1, 100 do
  if step % 10 == 0 then now = now + 0.25 end
  bar:update(step, { loss = 3 })
end
bar:close()
out:close()
text = slurp(tmp .. ".tty")
t.is(count(text, "\n"), 1, "on a terminal the bar stays on one line until close")
t.is(count(text, "\r"), 12, "on a terminal the bar redraws at most every 0.1 s, plus the last step and close")
t.ok(text:find("\rtrain  100/100  100%  |########################|  40.0 it/s  in 0:03  loss 3.0000\27[K\n", 1, true),
     "the terminal line shows a full bar, rate, elapsed time and loss at the end")

-- ======================================================= CSV log

local csv_path = tmp .. ".csv"
local log = progress.csv(csv_path, { "step", "loss", "val_loss", "lr", "time" })
log:write{ step = 1, loss = 4.25, lr = 3e-4, time = 0.5 }
t.is(slurp(csv_path), "step,loss,val_loss,lr,time\n1,4.25,,0.0003,0.5\n",
     "the CSV log has a header and each row is flushed as it is written")
log:write{ step = 2, loss = 0 / 0, val_loss = 2, time = 1.25, note = "ignored" }
log:close()
t.is(lines(slurp(csv_path))[3], "2,nan,2,,1.25", "missing values are empty, NaN is written as nan")
log = progress.csv(csv_path, { "step", "loss", "val_loss", "lr", "time" }, { append = true })
log:write{ step = 3, loss = 1.123456789 }
log:close()
l = lines(slurp(csv_path))
t.ok(#l == 4 and l[4] == "3,1.1234568,,,", "append adds rows without a second header")
log = progress.csv(csv_path, { "name", "value" })
log:write{ name = 'a, "b"', value = 1 }
log:close()
t.is(lines(slurp(csv_path))[2], '"a, ""b""",1', "text with commas or quotes is quoted")
t.error_like(function() log:write{ value = 1 } end, "write after close", "writing after close raises")
local bad, msg = progress.csv(tmp .. "/no/such/dir.csv", { "step" })
t.ok(bad == nil and msg:find("no/such/dir.csv", 1, true), "a CSV log that cannot be created gives nil and a message")

-- ======================================================= SVG loss curve

-- Well-formed enough: balanced tags and no stray '<' or '&' in text.
local function well_formed(s)
  local stack = {}
  for close, name, selfclose in s:gmatch("<(/?)([%w:%-]+)[^>]-(/?)>") do
    if close == "/" then
      if stack[#stack] ~= name then return false end
      stack[#stack] = nil
    elseif selfclose ~= "/" then
      stack[#stack + 1] = name
    end
  end
  local text_only = s:gsub("<[^>]*>", "")
  return #stack == 0 and not text_only:find("<", 1, true) and not text_only:find("&[^#%a]")
end

local svg_path = tmp .. ".svg"
local tr, va = { x = {}, y = {} }, { x = {}, y = {} }
for i = 1, 500 do tr.x[i], tr.y[i] = i, 1.5 + 3 * math.exp(-i / 100) end
for i = 1, 5 do va.x[i], va.y[i] = i * 100, 1.7 + 3 * math.exp(-i) end
va.y[3] = 0 / 0
tr.y[10] = math.huge
t.ok(plot.loss_curve(svg_path, { series = { { name = "train", x = tr.x, y = tr.y, smooth = 0.9 },
                                            { name = "val", x = va.x, y = va.y } },
                                 title = "loss <&> curve", xlabel = "step", ylabel = "loss" }),
     "loss_curve returns true once the SVG is written")
local svg = slurp(svg_path)
t.ok(svg:find("^<svg ") and svg:find("</svg>\n$"), "the file is one <svg> element")
t.ok(well_formed(svg), "the SVG's tags are balanced and its text escaped")
t.ok(svg:find(">train<", 1, true) and svg:find(">val<", 1, true), "the legend names every series")
t.ok(svg:find("loss &lt;&amp;&gt; curve", 1, true), "the title is escaped")
t.ok(not svg:lower():find("nan") and not svg:lower():find("inf"), "NaN and infinite points leave no trace in the SVG")
t.ok(count(svg, "<polyline") == 6,
     "a NaN or infinite value breaks a line in two, and a smoothed series adds its average")
t.ok(svg:find(">step<", 1, true) and svg:find(">loss<", 1, true), "both axes are labelled")

t.ok(plot.loss_curve(svg_path, { series = { { name = "train", y = tr.y } }, logy = true }),
     "a log-scale curve is written")
svg = slurp(svg_path)
t.ok(well_formed(svg) and svg:find(">2<", 1, true) and not svg:lower():find("nan"),
     "the log scale has labelled ticks and no NaN")

-- N from 256 to 16384 against a time growing as N^2: on log-log axes the
-- points are evenly spaced along x and their line is straight
local ns, ts = {}, {}
for i = 1, 7 do ns[i], ts[i] = 2 ^ (i + 7), 1e-9 * 4 ^ (i + 7) end
ns[8], ts[8] = 0, 1 -- x <= 0 has no place on a log axis
t.ok(plot.loss_curve(svg_path, { series = { { name = "quadratic", x = ns, y = ts } },
                                 logx = true, logy = true }),
     "a log-log plot is written")
svg = slurp(svg_path)
local px, py = {}, {}
for x, y in svg:match('<polyline[^>]-points="([^"]*)"'):gmatch("([%d.]+),([%d.]+)") do
  px[#px + 1], py[#py + 1] = tonumber(x), tonumber(y)
end
local even = #px == 7
for i = 3, #px do
  even = even and math.abs((px[i] - px[i - 1]) - (px[2] - px[1])) < 0.15
              and math.abs((py[i] - py[i - 1]) - (py[2] - py[1])) < 0.15
end
t.ok(well_formed(svg) and even, "on log-log axes powers of two are evenly spaced, x = 0 left out")
t.ok(svg:find(">1000<", 1, true) and svg:find(">10000<", 1, true),
     "the log x axis has labelled powers of ten")

t.ok(plot.loss_curve(svg_path, { { name = "empty", y = {} }, { name = "invalid", y = { 0 / 0 } } }),
     "series with no drawable point still give a picture")
svg = slurp(svg_path)
t.ok(well_formed(svg) and svg:find("no data", 1, true) and svg:find(">empty<", 1, true)
     and not svg:lower():find("nan"), "an empty plot says no data and keeps its legend")
t.ok(plot.loss_curve(svg_path, { { name = "one", y = { 2.5 } } }) and slurp(svg_path):find("<circle", 1, true),
     "a single point is drawn as a dot")
local ok, err = plot.loss_curve(tmp .. "/no/such/dir.svg", { { name = "x", y = { 1 } } })
t.ok(ok == nil and err:find("no/such/dir.svg", 1, true), "an unwritable path gives nil and a message")
t.error_like(function() plot.loss_curve(svg_path, { { name = "x", y = 3 } }) end,
             "series 1 must be a table", "a series whose y is not a list raises")

os.remove(tmp .. ".log")
os.remove(tmp .. ".tty")
os.remove(csv_path)
os.remove(svg_path)
t.done()
