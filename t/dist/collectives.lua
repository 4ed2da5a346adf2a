-- t/dist/collectives.lua -- each collective once, blocking and not, under
-- mpirun: prints "rank <r> <name> <values>" lines for t/distributed.t.
-- Runs from the glia executable and from a stock interpreter.
local glia = require "glia"
local dist = require "glia.distributed"
local r, n = dist.init()
local function show(name, t) -- %g: Lua 5.4 and LuaJIT print numbers alike
  local v = t:reshape(t:numel()):totable()
  for i = 1, #v do v[i] = ("%g"):format(v[i]) end
  print(("rank %d %s %s"):format(r, name, table.concat(v, ",")))
end
local t = glia.full({3}, r + 1)
dist.all_reduce(t, "sum")
show("all_reduce_sum", t)
show("all_reduce_mean", dist.all_reduce(glia.full({2}, r + 1), "mean"))
show("broadcast", dist.broadcast(glia.full({2}, r + 10), n - 1))
local g = dist.all_gather(glia.full({2}, r))
print(("rank %d all_gather_shape %s"):format(r, table.concat(g:shape(), "x")))
show("all_gather", g)
show("reduce_scatter", dist.reduce_scatter(glia.arange(1, 2 * n + 1, 1), "sum"))
local h1 = dist.all_reduce_async(glia.full({4}, r), "sum")
local h2 = dist.broadcast_async(glia.full({1}, r + 5), 0)
local h3 = dist.all_gather_async(glia.full({1}, r))
local h4 = dist.reduce_scatter_async(glia.ones(n, 2), "mean")
show("async_all_reduce", h1:wait())
show("async_broadcast", h2:wait())
show("async_all_gather", h3:wait())
show("async_reduce_scatter", h4:wait())
local h5 = dist.all_reduce_async(glia.ones(2))
while not h5:test() do end
show("test_then_wait", h5:wait())
-- a tensor freed while its collective runs: the handle keeps the bytes
local f = glia.ones(1000)
local h6 = dist.all_reduce_async(f)
f:free()
collectgarbage()
h6:wait()
dist.barrier()
print(("rank %d done world %d"):format(r, dist.world_size()))
