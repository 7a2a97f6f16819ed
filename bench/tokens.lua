-- wrk script for scripts/bench-oauth.sh: GET with a different token each request, from the
-- file $TOKENS (one per line, each used once while they last), so that every verification
-- misses the verified-token cache.
local tokens = {}
for line in io.lines(os.getenv("TOKENS")) do
    tokens[#tokens + 1] = line
end
local i = 0
local reused = 0

request = function()
    i = i + 1
    if i > #tokens then
        i = 1
        reused = reused + 1
    end
    return wrk.format("GET", nil, { ["Authorization"] = "Bearer " .. tokens[i] })
end

done = function(summary, latency, requests)
    if reused > 0 then
        io.stderr:write(string.format("tokens.lua: the %d tokens ran out %d times (those requests hit the cache)\n", #tokens, reused))
    end
end
