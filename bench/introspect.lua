-- wrk script for scripts/bench-oauth.sh: POST /oauth2/introspect of $TOKEN by the client
-- whose Basic credentials are $BASIC; every answer must be 200 and active.
wrk.method = "POST"
wrk.body = "token=" .. os.getenv("TOKEN")
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = "Basic " .. os.getenv("BASIC")

local bad = 0
response = function(status, headers, body)
    if status ~= 200 or not string.find(body, '"active":true', 1, true) then
        bad = bad + 1
    end
end

done = function(summary, latency, requests)
    if bad > 0 then
        io.stderr:write(string.format("introspect.lua: %d answers were not 200 and active\n", bad))
        os.exit(1)
    end
end
