package report

import (
	"math"
	"strconv"
	"time"
)

// Number and duration formatting shared by the text summary and the HTML
// page, so both print the same figure the same way.

// fmtCount groups digits by thousands: 1234567 -> "1,234,567".
func fmtCount(n uint64) string {
	return groupDigits(strconv.FormatUint(n, 10))
}

// fmtInt is fmtCount for signed values.
func fmtInt(n int64) string {
	if n < 0 {
		return "-" + fmtCount(uint64(-n))
	}
	return fmtCount(uint64(n))
}

func groupDigits(s string) string {
	if len(s) <= 3 {
		return s
	}
	b := make([]byte, 0, len(s)+len(s)/3)
	pre := len(s) % 3
	b = append(b, s[:pre]...)
	for i := pre; i < len(s); i += 3 {
		if len(b) > 0 {
			b = append(b, ',')
		}
		b = append(b, s[i:i+3]...)
	}
	return string(b)
}

// round3 rounds v to 3 significant digits, dividing or multiplying by an
// exact power of ten so that 99.96e6 becomes exactly 1e8.
func round3(v float64) float64 {
	if v == 0 || !finite(v) {
		return 0
	}
	e := math.Floor(math.Log10(math.Abs(v))) - 2
	if e >= 0 {
		q := math.Pow(10, e)
		return math.Round(v/q) * q
	}
	p := math.Pow(10, -e)
	return math.Round(v*p) / p
}

// sig3 prints a positive v rounded to 3 significant digits, keeping trailing
// zeros so that columns line up ("1.20", "12.0", "120").
func sig3(v float64) string {
	v = round3(v)
	switch {
	case v >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case v >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	default:
		return strconv.FormatFloat(v, 'f', 2, 64)
	}
}

// fmtUs prints a latency given in microseconds with 3 significant digits:
// "812µs", "1.23ms", "45.6ms", "2.00s"; past 100 s as minutes and seconds.
// 0 (nothing measured) prints as "-".
func fmtUs(us float64) string {
	switch {
	case us <= 0 || !finite(us):
		return "-"
	case us >= 1e12: // past 11 days: no time.Duration overflow
		return sig3(us/3.6e9) + "h"
	case us >= 99.95e6:
		return fmtLong(time.Duration(us) * time.Microsecond)
	}
	us = round3(us)
	switch {
	case us < 1e3:
		return strconv.FormatFloat(math.Round(us), 'f', 0, 64) + "µs"
	case us < 1e6:
		return sig3(us/1e3) + "ms"
	}
	return sig3(us/1e6) + "s"
}

// fmtDur is fmtUs for a time.Duration.
func fmtDur(d time.Duration) string {
	if d > 0 && d < time.Microsecond {
		return strconv.FormatInt(int64(d), 10) + "ns"
	}
	return fmtUs(float64(d) / 1e3)
}

// fmtLong prints d >= 100 s to the second: "1m40s", "1h02m03s".
func fmtLong(d time.Duration) string {
	s := int64(d.Round(time.Second) / time.Second)
	h, m := s/3600, s/60%60
	s %= 60
	if h > 0 {
		return strconv.FormatInt(h, 10) + "h" + pad2(m) + "m" + pad2(s) + "s"
	}
	return strconv.FormatInt(m, 10) + "m" + pad2(s) + "s"
}

func pad2(n int64) string {
	if n < 10 {
		return "0" + strconv.FormatInt(n, 10)
	}
	return strconv.FormatInt(n, 10)
}

// fmtRate prints a per-second rate: "0.50", "12.3", "6,620".
func fmtRate(v float64) string {
	switch {
	case v <= 0 || !finite(v):
		return "0"
	case v < 10:
		return strconv.FormatFloat(v, 'f', 2, 64)
	case v < 100:
		return strconv.FormatFloat(v, 'f', 1, 64)
	}
	return fmtCount(uint64(math.Round(v)))
}

// fmtPct prints part of total as a percentage; a share that is not zero
// never prints as "0.0%".
func fmtPct(part, total uint64) string {
	if total == 0 {
		return "-"
	}
	p := 100 * float64(part) / float64(total)
	switch {
	case part == 0:
		return "0%"
	case part == total:
		return "100%"
	case p < 0.1:
		return "<0.1%"
	case p > 99.9:
		return ">99.9%"
	}
	return strconv.FormatFloat(p, 'f', 1, 64) + "%"
}

// fmtSI prints an axis value compactly: "0", "250", "1.5k", "12k", "2M".
func fmtSI(v float64) string {
	if !finite(v) {
		return "0"
	}
	a := math.Abs(v)
	trim := func(x float64) string { return strconv.FormatFloat(math.Round(x*100)/100, 'f', -1, 64) }
	switch {
	case a >= 1e9:
		return trim(v/1e9) + "G"
	case a >= 1e6:
		return trim(v/1e6) + "M"
	case a >= 1e3:
		return trim(v/1e3) + "k"
	}
	return trim(v)
}

// fmtUsAxis prints a log-axis latency tick: "1µs", "200µs", "1ms", "5s".
func fmtUsAxis(us float64) string {
	trim := func(x float64) string { return strconv.FormatFloat(round3(x), 'f', -1, 64) }
	switch {
	case us < 1e3:
		return trim(us) + "µs"
	case us < 1e6:
		return trim(us/1e3) + "ms"
	}
	return trim(us/1e6) + "s"
}

// fmtSec prints a time-axis tick in seconds since the start: "45s", "2m",
// "1m30s", "1h".
func fmtSec(s int) string {
	switch {
	case s < 60:
		return strconv.Itoa(s) + "s"
	case s%3600 == 0:
		return strconv.Itoa(s/3600) + "h"
	case s < 3600 && s%60 == 0:
		return strconv.Itoa(s/60) + "m"
	case s < 3600:
		return strconv.Itoa(s/60) + "m" + strconv.Itoa(s%60) + "s"
	}
	return strconv.Itoa(s/3600) + "h" + pad2(int64(s/60%60)) + "m"
}

func finite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }
