-- glia.options -- the one check every options table in the stdlib goes
-- through: a key the function does not know is an error that names it and
-- lists the known ones, instead of an option dropped without a word.
--
--   local options = require "glia.options"
--   opts = options.check("glia.data.DataLoader", opts,
--                        { "batch_size", "shuffle", "seed", "drop_last" })
--
-- Requires only the C core (for glia.error), so that glia's own init.lua
-- can use it.
local type, pairs, tostring, setmetatable = type, pairs, tostring, setmetatable
local error = require("glia.core").error -- blames the user's line, never the stdlib's
local concat, sort = table.concat, table.sort

local options = {}

-- known list -> set of its keys, made once per list (callers on hot paths
-- keep their list in an upvalue); a list must not change after its first use
local sets = setmetatable({}, { __mode = "k" })

-- Returns opts, or a new empty table when opts is nil. Raises when opts is
-- not a table or holds a key not in the list known; the error is reported
-- at `level` as error() counts it, from the function calling check (default
-- 1: that function's caller, where the options were written).
function options.check(where, opts, known, level)
  level = (level or 1) + 2
  if opts == nil then return {} end
  if type(opts) ~= "table" then
    error(where .. ": options must be a table, got " .. type(opts), level)
  end
  local set = sets[known]
  if not set then
    set = {}
    for i = 1, #known do set[known[i]] = true end
    sets[known] = set
  end
  local bad
  for k in pairs(opts) do
    if not set[k] then
      bad = bad or {}
      bad[#bad + 1] = type(k) == "string" and "'" .. k .. "'" or tostring(k)
    end
  end
  if bad then
    sort(bad)
    error(where .. ": unknown option" .. (#bad > 1 and "s " or " ") .. concat(bad, ", ") ..
          " (known: " .. concat(known, ", ") .. ")", level)
  end
  return opts
end

return options
