-- wrk script for scripts/bench-oauth.sh: POST /oauth2/token, client_credentials, with the
-- client's Basic credentials from $BASIC (base64 of id:secret). With $TOKENS_OUT set, every
-- token issued is appended to that file, one per line (the uncached /jwt case replays them).
wrk.method = "POST"
wrk.body = "grant_type=client_credentials"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = "Basic " .. os.getenv("BASIC")

local bad = 0
local out = nil
local path = os.getenv("TOKENS_OUT")
if path and path ~= "" then
    out = io.open(path, "a")
    -- One write(2) per token, in append mode: wrk's threads do not interleave their lines.
    out:setvbuf("line")
end

response = function(status, headers, body)
    if status ~= 200 then
        bad = bad + 1
    elseif out then
        local t = string.match(body, '"access_token":"([^"]+)"')
        if t then
            out:write(t .. "\n")
        end
    end
end

done = function(summary, latency, requests)
    if out then
        out:close()
    end
    if bad > 0 then
        io.stderr:write(string.format("token.lua: %d answers were not 200\n", bad))
        os.exit(1)
    end
end
