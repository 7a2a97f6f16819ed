-- wrk script for scripts/bench-oauth.sh: POST /oauth2/token, client_credentials, with the
-- client's Basic credentials from $BASIC (base64 of id:secret).
wrk.method = "POST"
wrk.body = "grant_type=client_credentials"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = "Basic " .. os.getenv("BASIC")

local bad = 0
response = function(status, headers, body)
    if status ~= 200 then
        bad = bad + 1
    end
end

done = function(summary, latency, requests)
    if bad > 0 then
        io.stderr:write(string.format("token.lua: %d answers were not 200\n", bad))
        os.exit(1)
    end
end
