-- glia.progress -- progress bars for long loops, and training logs as CSV.
--
--   local bar = progress.bar{total = N, desc = "train", out = io.stderr}
--   bar:update(step, {loss = x, lr = y})   -- step defaults to the last one + 1
--   bar:close()
-- On a terminal the bar is one line redrawn in place (at most ~10 times a
-- second): step/total, percent, rate, ETA and the running loss (an
-- exponential moving average). Anywhere else (a file, a pipe, a CI log) it
-- prints a plain line every ~total/20 steps or every `every_s` seconds.
--
--   local log = progress.csv(path, {"step", "loss", "val_loss", "lr", "time"})
--   log:write{step = 1, loss = 4.2}   -- one line, flushed: a crash keeps the log
--   log:close()
local glia = require "glia"
local options = require "glia.options"

local floor, ceil, max, min, huge = math.floor, math.ceil, math.max, math.min, math.huge
local fmt, rep = string.format, string.rep
local concat, sort = table.concat, table.sort
local type, pairs, ipairs, tostring, setmetatable = type, pairs, ipairs, tostring, setmetatable
local error = glia.error -- blames the user's line, never the stdlib's
local io_open, io_stdout, io_stderr = io.open, io.stdout, io.stderr

local progress = {}

-- ======================================================= formatting

-- Seconds as M:SS or H:MM:SS.
local function clock_str(s)
  if s ~= s or s == huge then return "?" end
  s = floor(s + 0.5)
  local h, m = floor(s / 3600), floor(s / 60) % 60
  if h > 0 then return fmt("%d:%02d:%02d", h, m, s % 60) end
  return fmt("%d:%02d", m, s % 60)
end

local function rate_str(r)
  if r <= 0 or r ~= r then return "? it/s" end
  if r < 1 then return fmt("%.2f s/it", 1 / r) end
  return fmt("%.1f it/s", r)
end

-- Metrics: whole numbers as integers, others with 4 decimals or in
-- scientific notation when tiny or huge (learning rates).
local function num_str(v)
  if type(v) ~= "number" then return tostring(v) end
  if v ~= v then return "nan" end
  if v == floor(v) and v > -1e15 and v < 1e15 then return fmt("%d", v) end
  local a = v < 0 and -v or v
  if a >= 1e-3 and a < 1e5 then return fmt("%.4f", v) end
  return fmt("%.3e", v)
end

-- ======================================================= progress bar

local Bar = {}
Bar.__index = Bar

local BAR_WIDTH = 24
local TTY_INTERVAL = 0.1

-- The file descriptor behind a standard Lua file, or nil.
local function fd_of(out)
  if out == io_stdout then return 1 end
  if out == io_stderr then return 2 end
  return nil
end

-- opts: total (nil: unknown), desc, out (io.stderr), tty (detected),
-- every_s (10: the most seconds between plain lines), ema (0.98: loss
-- smoothing), clock (glia.clock: a function returning seconds).
function progress.bar(opts)
  opts = options.check("progress.bar", opts,
                       { "total", "desc", "out", "tty", "every_s", "ema", "clock" })
  local out = opts.out or io_stderr
  local tty = opts.tty
  if tty == nil then
    local fd = fd_of(out)
    tty = fd ~= nil and glia.isatty(fd)
  end
  local total = opts.total
  if total ~= nil and (type(total) ~= "number" or total < 0) then
    error("progress.bar: total must be a non-negative number, got " .. tostring(total), 2)
  end
  local clock = opts.clock or glia.clock
  local t0 = clock()
  local every_n = total and max(1, ceil(total / 20)) or 100 -- at most ~20 plain lines
  return setmetatable({
    total = total,
    desc = opts.desc or "",
    out = out,
    tty = tty,
    every_s = opts.every_s or 10,
    every_n = every_n,
    beta = opts.ema or 0.98,
    clock = clock,
    t0 = t0,
    step = 0,
    first = nil, -- the first step seen, for the rate
    metrics = {},
    loss_ema = 0,
    loss_n = 0,
    last_draw = t0 - TTY_INTERVAL, -- a terminal draws the first update at once
    last_line_step = 0,
    next_line_step = every_n,
  }, Bar)
end

-- The running loss (bias-corrected exponential moving average), or nil.
function Bar:loss()
  if self.loss_n == 0 then return nil end
  return self.loss_ema / (1 - self.beta ^ self.loss_n)
end

-- The text of the current state, without line ending.
function Bar:text(now)
  local parts = {}
  if self.desc ~= "" then parts[#parts + 1] = self.desc end
  local elapsed = now - self.t0
  local done = self.first and self.step - self.first + 1 or 0
  local rate = elapsed > 0 and done / elapsed or 0
  if self.total and self.total > 0 then
    local frac = min(1, self.step / self.total)
    parts[#parts + 1] = fmt("%d/%d", self.step, self.total)
    parts[#parts + 1] = fmt("%3d%%", floor(frac * 100))
    if self.tty then
      local fill = floor(frac * BAR_WIDTH + 0.5)
      parts[#parts + 1] = "|" .. rep("#", fill) .. rep("-", BAR_WIDTH - fill) .. "|"
    end
    parts[#parts + 1] = rate_str(rate)
    local left = self.total - self.step
    parts[#parts + 1] = left > 0 and ("ETA " .. clock_str(rate > 0 and left / rate or huge))
                                  or ("in " .. clock_str(elapsed))
  else
    parts[#parts + 1] = fmt("%d", self.step)
    parts[#parts + 1] = rate_str(rate)
    parts[#parts + 1] = clock_str(elapsed)
  end
  local loss = self:loss()
  if loss then parts[#parts + 1] = fmt("loss %.4f", loss) end
  local keys = {}
  for k in pairs(self.metrics) do if k ~= "loss" then keys[#keys + 1] = k end end
  sort(keys)
  for _, k in ipairs(keys) do parts[#parts + 1] = k .. " " .. num_str(self.metrics[k]) end
  return concat(parts, "  ")
end

function Bar:draw(now)
  self.last_draw = now
  if self.tty then
    self.out:write("\r", self:text(now), "\27[K")
  else
    self.out:write(self:text(now), "\n")
    self.last_line_step = self.step
  end
  self.out:flush()
end

-- Records step (default: the previous step + 1) and its metrics; a "loss"
-- metric feeds the running average. Redraws when it is time to.
function Bar:update(step, metrics)
  step = step or self.step + 1
  if not self.first then self.first = step end
  self.step = step
  for k, v in pairs(metrics or {}) do
    self.metrics[k] = v
    if k == "loss" and type(v) == "number" and v == v then
      self.loss_ema = self.beta * self.loss_ema + (1 - self.beta) * v
      self.loss_n = self.loss_n + 1
    end
  end
  local now = self.clock()
  if self.tty then
    if now - self.last_draw >= TTY_INTERVAL or step == self.total then self:draw(now) end
  elseif step >= self.next_line_step or now - self.last_draw >= self.every_s then
    while self.next_line_step <= step do self.next_line_step = self.next_line_step + self.every_n end
    self:draw(now)
  end
end

-- Prints a line above the bar without breaking it (e.g. a validation loss).
function Bar:print(s)
  if self.tty then self.out:write("\r\27[K") end
  self.out:write(s, "\n")
  if self.tty and self.first then self:draw(self.clock()) end
  self.out:flush()
end

-- Draws the final state and ends the line.
function Bar:close()
  if self.closed then return end
  self.closed = true
  local now = self.clock()
  if self.tty then
    self:draw(now)
    self.out:write("\n")
    self.out:flush()
  elseif self.first and self.last_line_step ~= self.step then
    self:draw(now)
  end
end

-- ======================================================= CSV log

local Csv = {}
Csv.__index = Csv

local function csv_field(v)
  if v == nil then return "" end
  if type(v) == "number" then
    if v ~= v then return "nan" end
    if v == floor(v) and v > -1e15 and v < 1e15 then return fmt("%d", v) end
    return fmt("%.8g", v)
  end
  local s = tostring(v)
  if s:find('[,"\r\n]') then s = '"' .. s:gsub('"', '""') .. '"' end
  return s
end

-- Opens path for writing (opts.append: add to an existing log, without a
-- second header). Returns the logger, or nil and a message.
function progress.csv(path, columns, opts)
  if type(columns) ~= "table" or #columns == 0 then
    error("progress.csv: columns must be a non-empty list of names", 2)
  end
  local append = options.check("progress.csv", opts, { "append" }).append
  local size = 0
  if append then
    local old = io_open(path, "rb")
    if old then size = old:seek("end") old:close() end
  end
  local f, err = io_open(path, append and "ab" or "wb")
  if not f then return nil, "progress.csv: " .. err end
  local self = setmetatable({ f = f, columns = columns, path = path }, Csv)
  if size == 0 then
    local head = {}
    for i, c in ipairs(columns) do head[i] = csv_field(c) end
    f:write(concat(head, ","), "\n")
    f:flush()
  end
  return self
end

-- Writes one line from row (column name -> value; missing values are empty).
function Csv:write(row)
  if not self.f then error("progress.csv: write after close (" .. self.path .. ")", 2) end
  local fields = {}
  for i, c in ipairs(self.columns) do fields[i] = csv_field(row[c]) end
  self.f:write(concat(fields, ","), "\n")
  self.f:flush()
end

function Csv:close()
  if self.f then self.f:close() end
  self.f = nil
end

return progress
