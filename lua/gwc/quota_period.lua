-- Quota period boundaries in UTC (AWS usage-plan semantics): a day starts
-- at midnight, a week on Sunday + offset days, a month on day 1 + offset.
--
-- Pure calendar arithmetic on days since the epoch, not os.date/os.time:
-- os.time reads the local time zone, and the gateway's zone is not ours.
-- Callers cache the result until the period ends, so none of this is on
-- the hot path.
local floor = math.floor

local _M = { _VERSION = "0.1.0" }

local DAY = 86400

-- Howard Hinnant's days_from_civil / civil_from_days (proleptic Gregorian).
local function days_from_civil(y, m, d)
    if m <= 2 then
        y = y - 1
    end
    local era = floor(y / 400)
    local yoe = y - era * 400
    local mp = (m + 9) % 12
    local doy = floor((153 * mp + 2) / 5) + d - 1
    local doe = yoe * 365 + floor(yoe / 4) - floor(yoe / 100) + doy
    return era * 146097 + doe - 719468
end

local function civil_from_days(z)
    z = z + 719468
    local era = floor(z / 146097)
    local doe = z - era * 146097
    local yoe = floor((doe - floor(doe / 1460) + floor(doe / 36524) - floor(doe / 146096)) / 365)
    local y = yoe + era * 400
    local doy = doe - (365 * yoe + floor(yoe / 4) - floor(yoe / 100))
    local mp = floor((5 * doy + 2) / 153)
    local d = doy - floor((153 * mp + 2) / 5) + 1
    local m = mp < 10 and mp + 3 or mp - 9
    if m <= 2 then
        y = y + 1
    end
    return y, m, d
end

_M.days_from_civil = days_from_civil
_M.civil_from_days = civil_from_days

-- Returns the start and end (epoch seconds, end exclusive) of the period
-- that contains `now` (epoch seconds).
function _M.bounds(period, offset, now)
    offset = offset or 0
    local days = floor(now / DAY)
    if period == "day" then
        return days * DAY, (days + 1) * DAY
    elseif period == "week" then
        -- 1970-01-01 was a Thursday: (days + 4) % 7 is 0 on Sundays.
        local start = days - (days + 4 - offset) % 7
        return start * DAY, (start + 7) * DAY
    elseif period == "month" then
        local y, m, d = civil_from_days(days)
        local first = 1 + offset -- at most 28, so every month has it
        if d < first then
            m = m - 1
            if m == 0 then
                m, y = 12, y - 1
            end
        end
        local ny, nm = y, m + 1
        if nm == 13 then
            ny, nm = y + 1, 1
        end
        return days_from_civil(y, m, first) * DAY, days_from_civil(ny, nm, first) * DAY
    end
    return nil, "unknown quota period " .. tostring(period)
end

return _M
