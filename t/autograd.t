-- t/autograd.t -- the tape: accumulation, graph freeing, no_grad, in-place
-- safety, broadcasting reductions, detach; the f64 gradient check of
-- t/util.lua fails on a wrong gradient or forward.
local t = require "t.tap"
local glia = require "glia"
local u = require "t.util"

local function ones_like(x) return glia.ones_like(x) end

do -- accumulation over two backward passes
  local x = glia.tensor{1, 2, 3}:requires_grad()
  local y = x * x
  y:backward(ones_like(y))
  t.near(x.grad, {2, 4, 6}, 1e-6, "backward of x*x gives 2x")
  local z = x * 3
  z:backward(ones_like(z))
  t.near(x.grad, {5, 7, 9}, 1e-6, "a second backward accumulates into .grad")
  x:zero_grad()
  t.is(x.grad, nil, "zero_grad clears .grad")
end

do -- assigning .grad: checked, and backward adds into what is kept
  local function ok_err(f, pat, desc) t.error_like(f, pat, desc) end
  local x = glia.ones(3):requires_grad()
  ok_err(function() x.grad = glia.zeros(100000) end,
         "glia.tensor.grad: gradient f32 {100000} does not match tensor f32 {3}",
         "a .grad larger than the tensor is refused, naming both shapes")
  local big = glia.ones(100000):requires_grad()
  ok_err(function() big.grad = glia.zeros(3) end, "does not match tensor f32 {100000}",
         "a .grad smaller than the tensor is refused")
  ok_err(function() x.grad = glia.zeros(3):to("f64") end,
         "gradient f64 {3} does not match tensor f32 {3}", "a .grad of another dtype is refused")
  ok_err(function() glia.ones(3):to("i32").grad = glia.zeros(3):to("i32") end,
         "only f32 tensors have a gradient", "a non-f32 tensor takes no .grad")
  ok_err(function() x.grad = 3 end, "tensor", "a .grad that is not a tensor is refused")
  t.is(x.grad, nil, "a refused assignment leaves .grad as it was")
  ;(x * 2):sum():backward()
  t.near(x.grad, {2, 2, 2}, 0, "backward after refused assignments accumulates as usual")

  local g = glia.tensor{10, 20, 30}
  x.grad = g
  ;(x * 2):sum():backward()
  t.near(g, {12, 22, 32}, 0, "an assigned contiguous .grad is kept as is: backward adds into it")
  x.grad = nil
  t.is(x.grad, nil, "x.grad = nil clears the gradient")
  ;(x * 2):sum():backward()
  t.near(x.grad, {2, 2, 2}, 0, "after clearing, backward starts from zero")

  local one = glia.zeros(1)
  x.grad = one:expand(3)
  ;(x * 2):sum():backward()
  t.near(x.grad, {2, 2, 2}, 0, "an expanded (stride 0) .grad is kept as a copy: each element gets its own gradient")
  t.near(one, {0}, 0, "... and the expanded tensor's storage is not written")

  local m = glia.tensor{{1, 2}, {3, 4}, {5, 6}}
  local w = glia.ones(2, 3):requires_grad()
  w.grad = m:t()
  ;(w * 2):sum():backward()
  t.near(w.grad, {{3, 5, 7}, {4, 6, 8}}, 0, "a transposed .grad keeps its values (as a contiguous copy)")
  t.near(m, {{1, 2}, {3, 4}, {5, 6}}, 0, "... and the view's storage is not written")

  local y = glia.tensor{1, 2, 3}:requires_grad()
  y.grad = y
  ;(y * 2):sum():backward()
  t.near(y, {1, 2, 3}, 0, "a .grad that is the tensor itself is copied: backward does not write the tensor")
  t.near(y.grad, {3, 4, 5}, 0, "... and the copy accumulates")
  local z = glia.tensor{1, 2, 3, 4}:requires_grad()
  z.grad = z:detach():narrow(1, 1, 4)
  ;(z * 1):sum():backward()
  t.near(z, {1, 2, 3, 4}, 0, "a .grad sharing the tensor's bytes is copied")

  local h = glia.ones(3):requires_grad()
  x.grad = h * 1
  t.ok(not x.grad:needs_grad(), "a .grad with a history is stored detached")

  local v = glia.ones(4):requires_grad()
  v.grad = glia.tensor{1, 1, 1, 1}
  v:narrow(1, 2, 2):sum():backward()
  t.near(v.grad, {1, 2, 2, 1}, 0, "a slice's backward adds into an assigned .grad")

  local nv = glia.ones(3):requires_grad()
  local freed = glia.ones(3)
  freed:free()
  t.error_like(function() nv.grad = freed end, "freed", "a freed tensor is refused as .grad")
end

do -- the diamond: x used on two paths
  local x = glia.tensor{1, -2}:requires_grad()
  local y = x * x + x * 3
  y:backward(ones_like(y))
  t.near(x.grad, {5, -1}, 1e-6, "gradients from two paths add up (2x + 3)")
end

do -- broadcasting reduces the gradient to each input's shape
  local a = glia.ones(3, 1):requires_grad()
  local b = glia.ones(1, 4):requires_grad()
  local c = a + b
  c:backward(ones_like(c))
  t.is(table.concat(a.grad:shape(), ","), "3,1", "broadcast gradient keeps the {3,1} input shape")
  t.near(a.grad, {{4}, {4}, {4}}, 1e-6, "broadcast gradient sums over the expanded dim")
  t.near(b.grad, {{3, 3, 3, 3}}, 1e-6, "broadcast gradient sums over the other expanded dim")
end

do -- graph freeing and keep_graph
  local x = glia.tensor{2}:requires_grad()
  local y = x * x
  y:backward()
  t.error_like(function() y:backward() end, "already freed",
               "a second backward through a freed graph is an error")
  local x2 = glia.tensor{2}:requires_grad()
  local y2 = x2 * x2
  y2:backward(nil, true)
  y2:backward()
  t.near(x2.grad, {8}, 1e-6, "keep_graph allows a second backward")
end

do -- implicit gradient needs one element
  local x = glia.ones(2, 2):requires_grad()
  local y = x * 2
  t.error_like(function() y:backward() end, "1%-element", "backward of a non-scalar without a gradient is an error")
  t.error_like(function() glia.ones(2):backward() end, "does not require grad",
               "backward of a tensor without history is an error")
  t.error_like(function() y:backward(glia.ones(3)) end, "does not match",
               "backward with a wrongly shaped gradient is an error")
end

do -- no_grad, detach, requires_grad rules
  local x = glia.ones(2):requires_grad()
  local y = glia.no_grad(function() return x * 2 end)
  t.ok(not y:needs_grad(), "results computed under no_grad carry no history")
  t.ok(glia.is_grad_enabled(), "no_grad restores grad mode")
  pcall(glia.no_grad, function() error("boom") end)
  t.ok(glia.is_grad_enabled(), "no_grad restores grad mode after an error")
  local d = (x * 2):detach()
  t.ok(not d:needs_grad(), "detach drops history")
  t.error_like(function() glia.ones(2, "i64"):requires_grad() end, "only f32",
               "an i64 tensor cannot require grad")
end

do -- in-place safety
  local x = glia.ones(3):requires_grad()
  t.error_like(function() x:add_(1) end, "in%-place", "in-place op on a tensor that requires grad is refused")
  local w = glia.ones(3):requires_grad()
  local a = glia.tensor{1, 2, 3}
  local y = w * a -- saves a
  a:add_(1)
  t.error_like(function() y:backward(glia.ones(3)) end, "modified in place",
               "backward after an in-place change to a saved tensor is an error")
  glia.no_grad(function() x:add_(1) end)
  t.near(x, {2, 2, 2}, 0, "in-place ops are allowed under no_grad")
end

do -- a long chain does not overflow anything on backward or release
  local x = glia.tensor{1}:requires_grad()
  local y = x
  for _ = 1, 5000 do y = y + 1 end
  y:backward()
  t.near(x.grad, {1}, 0, "backward through a 5000-op chain")
  y = nil
  collectgarbage()
  t.ok(true, "a 5000-op graph is released without trouble")
end

do -- a graph far deeper than the C stack: in a process with a 1 MiB stack,
   -- 200000 ops deep (a recursive release needed about 100 bytes a level)
  local u = require "t.util"
  local script = u.spit(os.tmpname(), [[
    local glia = require "glia"
    local function chain(x)
      local y = x
      for _ = 1, 200000 do y = y + 1 end
      return y
    end
    local x = glia.ones(1):requires_grad()
    chain(x):backward() -- backward frees the graph as it goes
    io.write(x.grad:item(), " ")
    local y = chain(x)  -- this one is dropped whole
    y = nil
    collectgarbage()
    io.write("released")
  ]])
  local out, code = u.sh("ulimit -s 1024 && " .. u.sh_quote(u.exe()) .. " " .. script ..
                         " 2>&1")
  os.remove(script)
  t.ok(code == 0 and (out == "1.0 released" or out == "1 released"),
       "backward through and release of a 200000-op chain run in a 1 MiB stack")
  if code ~= 0 then t.diag("exit " .. tostring(code) .. ": " .. tostring(out)) end
end

do -- the f64 gradient check (t/util.lua) can fail: it tells a wrong gradient and a wrong forward
  local function sq(x)
    local r = {}
    for i, e in ipairs(x) do r[i] = e * e end
    return r
  end
  local x = glia.tensor{0.5, -1.25, 2}
  t.ok(u.check_grad_f64(function(a) return a * a end, sq, { x }),
       "check_grad_f64 passes x * x against a reference x^2")
  local ok, why = u.check_grad_f64(function(a) return a * a:detach() end, sq, { x })
  local num, got = tostring(why):match("^input 1, element 1: f64 numeric (%S+), autograd (%S+) ")
  t.ok(not ok and num and math.abs(tonumber(got) - tonumber(num) / 2) < 1e-6,
       "check_grad_f64 fails x * x:detach() (forward right, gradient half), naming input, element and both values")
  if ok or not num then t.diag(tostring(why)) end
  ok, why = u.check_grad_f64(function(a) return a * 2 end, sq, { x })
  t.ok(not ok and why:find("^forward: fn and ref differ"), "check_grad_f64 fails a forward that differs from ref")
end

t.done()
