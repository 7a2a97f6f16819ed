-- wrk script for scripts/bench-hmac.sh: each request from the file $SIGNED, one per line, each
-- sent once while they last (a signed request is single-use): METHOD, path, then header
-- name/value pairs, tab-separated. $BODY_FILE, when set, is the body of every request. The
-- requests are formatted before the run, so that wrk is not what limits the rate.
local lines = {}
for line in io.lines(os.getenv("SIGNED")) do
    lines[#lines + 1] = line
end
local body = nil
local body_file = os.getenv("BODY_FILE")
if body_file and body_file ~= "" then
    local f = assert(io.open(body_file, "rb"))
    body = f:read("*a")
    f:close()
end
local parsed = {}

-- Formatted once per thread before the run (wrk.headers has the Host by then), so that sending
-- costs wrk nothing but a table read: the client must not be what limits the rate.
init = function(args)
    for n, line in ipairs(lines) do
        local fields = {}
        for field in string.gmatch(line, "[^\t]+") do
            fields[#fields + 1] = field
        end
        local headers = {}
        for k = 3, #fields - 1, 2 do
            headers[fields[k]] = fields[k + 1]
        end
        parsed[n] = wrk.format(fields[1], fields[2], headers, body)
    end
end
local i = 0
local reused = 0

request = function()
    i = i + 1
    if i > #parsed then
        i = 1
        reused = reused + 1
    end
    return parsed[i]
end

done = function(summary, latency, requests)
    if reused > 0 then
        io.stderr:write(string.format("signed.lua: the %d signed requests ran out %d times (the repeats were refused)\n", #parsed, reused))
    end
end
