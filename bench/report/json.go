package report

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// maxJSONBytes bounds what ReadJSON reads: a 1-hour run with 20 outcomes
// and 50 hot SKUs is some 5 MB, so this only stops a wrong file.
const maxJSONBytes = 256 << 20

// WriteJSON writes r as indented JSON (the run.json saved next to a report),
// with arrays of numbers kept on one line so that a long run stays readable
// and diffable: one line per outcome list, not one per count.
func WriteJSON(w io.Writer, r *Run) error {
	if r == nil {
		return errors.New("report: WriteJSON of a nil Run")
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("report: encoding the run: %w", err)
	}
	b = append(flattenNumberArrays(b), '\n')
	_, err = w.Write(b)
	return err
}

// ReadJSON reads a Run written by WriteJSON, so that a saved run can be
// rendered again. Unknown fields are ignored: a run saved by a newer
// flashgate still renders.
func ReadJSON(rd io.Reader) (*Run, error) {
	dec := json.NewDecoder(io.LimitReader(rd, maxJSONBytes))
	var r Run
	if err := dec.Decode(&r); err != nil {
		return nil, fmt.Errorf("report: reading a run's JSON: %w", err)
	}
	return &r, nil
}

// flattenNumberArrays rewrites indented JSON so that every array holding
// only numbers is on one line: "[\n    1,\n    2\n  ]" becomes "[1,2]".
func flattenNumberArrays(b []byte) []byte {
	out := make([]byte, 0, len(b))
	inString, escaped := false, false
	for i := 0; i < len(b); i++ {
		c := b[i]
		if inString {
			out = append(out, c)
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
			continue
		}
		if c == '"' {
			inString = true
		}
		if c != '[' {
			out = append(out, c)
			continue
		}
		// Find the matching ']' if only numbers, commas and spaces lie
		// between.
		j, numbers := i+1, true
		for ; j < len(b) && b[j] != ']'; j++ {
			if !isNumberByte(b[j]) && b[j] != ',' && b[j] != ' ' && b[j] != '\n' {
				numbers = false
				break
			}
		}
		if !numbers || j == len(b) {
			out = append(out, c)
			continue
		}
		out = append(out, '[')
		for _, d := range b[i+1 : j] {
			if d != ' ' && d != '\n' {
				out = append(out, d)
			}
		}
		out = append(out, ']')
		i = j
	}
	return out
}

func isNumberByte(c byte) bool {
	return c >= '0' && c <= '9' || c == '-' || c == '+' || c == '.' || c == 'e' || c == 'E'
}
