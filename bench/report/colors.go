package report

// Colours of the page. An outcome has the same colour in every chart and
// table: accepted green, sold-out grey, rate-limited orange, unavailable
// red, errors dark red.

const (
	colSent      = "#3b6fb6"
	colDue       = "#8c959f"
	colResponses = "#8a63d2"
	colLanded    = "#6aaed6"
	colP50       = "#3b6fb6"
	colP99       = "#e8890c"
	colP999      = "#d62728"
	colMax       = "#6e7781"
)

var outcomeColors = map[string]string{
	"accepted":              "#2f9e44",
	"replayed":              "#8ce99a",
	"sold-out":              "#adb5bd",
	"purchase-limit":        "#9775fa",
	"rate-limited":          "#f59f00",
	"unavailable":           "#e03131",
	"sale-not-active":       "#4dabf7",
	"unknown-sku":           "#a47148",
	"idempotency-in-flight": "#66d9e8",
	"idempotency-mismatch":  "#c2a633",
	"invalid-request":       "#f783ac",
	"unauthorized":          "#5f3dc4",
	"other-2xx":             "#a5d8ff",
	"other-4xx":             "#ffd43b",
	"other-5xx":             "#c92a2a",
	"error":                 "#6b0f0f",
}

// spareColors go to outcomes not named above, by their position.
var spareColors = []string{"#1098ad", "#e64980", "#82c91e", "#7048e8", "#fd7e14", "#0b7285", "#862e9c", "#5c940d"}

func outcomeColor(name string, i int) string {
	if c, ok := outcomeColors[name]; ok {
		return c
	}
	return spareColors[i%len(spareColors)]
}

// skuPalette colours the hot SKUs' lines (Tableau 10).
var skuPalette = []string{"#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
	"#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"}
