//! Decoding code objects' line tables: which source line an instruction belongs to.

use super::layout::LineTableFormat;

/// The line of the instruction `offset` bytes into the bytecode of a code object whose
/// first line is `first_line`, per its line `table`. A negative offset (a frame that has
/// not started) gives `first_line`. `None` when the table has no line for the offset or
/// is malformed.
pub fn line_at(format: LineTableFormat, table: &[u8], first_line: i32, offset: i64) -> Option<u32> {
    let first = i64::from(first_line);
    let line = if offset < 0 {
        Some(first)
    } else {
        match format {
            LineTableFormat::Lnotab => Some(lnotab(table, first, offset)),
            LineTableFormat::Linetable310 => linetable310(table, first, offset),
            LineTableFormat::Locations => locations(table, first, offset / 2),
        }
    };
    line.and_then(|l| u32::try_from(l).ok())
}

/// 3.9 `co_lnotab`: pairs of (byte offset increment, signed line increment); the line of
/// an offset is the line reached before the first increment that passes it.
fn lnotab(table: &[u8], mut line: i64, offset: i64) -> i64 {
    let mut addr = 0;
    for pair in table.chunks_exact(2) {
        addr += i64::from(pair[0]);
        if addr > offset {
            break;
        }
        line += i64::from(pair[1] as i8);
    }
    line
}

/// 3.10 `co_linetable`: each pair (byte length, signed line delta) is one address range;
/// a delta of -128 marks a range without a line.
fn linetable310(table: &[u8], mut line: i64, offset: i64) -> Option<i64> {
    let mut end = 0;
    for pair in table.chunks_exact(2) {
        let start = end;
        end += i64::from(pair[0]);
        let delta = pair[1] as i8;
        let this = (delta != -128).then(|| {
            line += i64::from(delta);
            line
        });
        if (start..end).contains(&offset) {
            return this;
        }
    }
    None
}

/// 3.11+ location table (CPython `Objects/locations.md`): entries start with a byte
/// `1 cccc lll` covering `lll + 1` code units; the code `cccc` says how the line changes
/// and how many column bytes follow. `index` is in code units.
fn locations(table: &[u8], mut line: i64, index: i64) -> Option<i64> {
    let mut bytes = table.iter().copied();
    let mut unit = 0;
    while let Some(head) = bytes.next() {
        if head & 0x80 == 0 {
            return None;
        }
        let code = (head >> 3) & 0xf;
        let this = match code {
            // No location.
            15 => None,
            // Long form: line delta, end line delta, start and end columns.
            14 => {
                line += svarint(&mut bytes)?;
                for _ in 0..3 {
                    varint(&mut bytes)?;
                }
                Some(line)
            }
            // No column: line delta only.
            13 => {
                line += svarint(&mut bytes)?;
                Some(line)
            }
            // One-line forms: the code is 10 + line delta, then two column bytes.
            10..=12 => {
                line += i64::from(code - 10);
                bytes.nth(1)?;
                Some(line)
            }
            // Short forms: same line, one column byte.
            _ => {
                bytes.next()?;
                Some(line)
            }
        };
        unit += i64::from(head & 7) + 1;
        if index < unit {
            return this;
        }
    }
    None
}

/// An unsigned varint: 6-bit chunks, least significant first, bit 6 set on all but the last.
fn varint(bytes: &mut impl Iterator<Item = u8>) -> Option<u64> {
    let mut value = 0;
    for shift in (0..64).step_by(6) {
        let b = bytes.next()?;
        if b & 0x80 != 0 {
            return None;
        }
        value |= u64::from(b & 0x3f) << shift;
        if b & 0x40 == 0 {
            return Some(value);
        }
    }
    None
}

/// A signed varint: the magnitude shifted left by one, sign in the low bit.
fn svarint(bytes: &mut impl Iterator<Item = u8>) -> Option<i64> {
    let v = varint(bytes)?;
    let magnitude = i64::try_from(v >> 1).ok()?;
    Some(if v & 1 != 0 { -magnitude } else { magnitude })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    // Tables of the same function compiled by each interpreter (its body spans lines
    // 3..=310 with a 300-line gap, a loop and a two-line expression); expectations come
    // from `dis.findlinestarts` (3.9), `co_lines()` (3.10) and `co_positions()` (3.11+).
    const SOURCE_FIRST_LINE: i32 = 2;

    #[test]
    fn lnotab_3_9() {
        let table = hex("000108010c010a7f007f00300801020102ff0402");
        let starts = [
            (0, 3),
            (8, 4),
            (20, 5),
            (30, 307),
            (38, 308),
            (40, 309),
            (42, 308),
            (46, 310),
        ];
        for offset in (0..50).step_by(2) {
            let want = starts.iter().rev().find(|(s, _)| *s <= offset).unwrap().1;
            let got = line_at(LineTableFormat::Lnotab, &table, SOURCE_FIRST_LINE, offset);
            assert_eq!(got, Some(want), "offset {offset}");
        }
        assert_eq!(line_at(LineTableFormat::Lnotab, &table, 2, -1), Some(2));
    }

    #[test]
    fn linetable_3_10() {
        let table = hex("08010c010a01007f007f08300201020104ff0402");
        let ranges = [
            (0, 8, 3),
            (8, 20, 4),
            (20, 30, 5),
            (30, 38, 307),
            (38, 40, 308),
            (40, 42, 309),
            (42, 46, 308),
            (46, 50, 310),
        ];
        for (start, end, line) in ranges {
            for offset in (start..end).step_by(2) {
                let got = line_at(
                    LineTableFormat::Linetable310,
                    &table,
                    SOURCE_FIRST_LINE,
                    offset,
                );
                assert_eq!(got, Some(line), "offset {offset}");
            }
        }
        assert_eq!(line_at(LineTableFormat::Linetable310, &table, 2, 50), None);
        // A range with delta -128 has no line, and does not move the running line.
        let table = [4, 1, 2, 0x80, 2, 1];
        let at = |o| line_at(LineTableFormat::Linetable310, &table, 10, o);
        assert_eq!((at(0), at(4), at(6)), (Some(11), None, Some(12)));
    }

    fn check_locations(table: &str, lines: &[u32]) {
        let table = hex(table);
        for (unit, want) in lines.iter().enumerate() {
            let offset = 2 * unit as i64;
            let got = line_at(
                LineTableFormat::Locations,
                &table,
                SOURCE_FIRST_LINE,
                offset,
            );
            assert_eq!(got, Some(*want), "code unit {unit}");
        }
        let end = 2 * lines.len() as i64;
        assert_eq!(line_at(LineTableFormat::Locations, &table, 2, end), None);
    }

    #[test]
    fn locations_3_11() {
        let mut lines = vec![2, 3, 3, 3, 3, 3];
        lines.extend([4; 17]);
        lines.extend([5; 6]);
        lines.extend([307; 6]);
        lines.extend([308, 309, 308, 308, 310, 310]);
        check_locations(
            "8000d80809884189058041dd0d12903189588c58f00001050ff00001050f8801d808098851890688018801f05c09000809883182758075d81011d81011f003011013f000010913e00b0c8048",
            &lines,
        );
    }

    #[test]
    fn locations_3_13() {
        let mut lines = vec![2, 3, 3, 3, 3, 3];
        lines.extend([4; 14]);
        lines.extend([5; 6]);
        lines.extend([4, 4]);
        lines.extend([307; 6]);
        lines.extend([308, 309, 308, 308, 310, 310]);
        check_locations(
            "8000d80809884189058041dc0d1290318e588801d8080989068a01f103000e16f05e0900080988318375d81011d81011f003011013f000010913e00b0c8048",
            &lines,
        );
    }

    #[test]
    fn locations_hand_made() {
        // No location (1 unit); short form (2 units, one column byte); one-line form with
        // delta 2 (1 unit, two column bytes); no-column form with delta -3 (svarint 7);
        // long form with delta +70 (svarint 140 = 0x4c 0x02) and three varints.
        let table = [
            0xf8, 0x81, 0x05, 0xe0, 1, 2, 0xe8, 0x07, 0xf0, 0x4c, 0x02, 0, 1, 2,
        ];
        let at = |unit: i64| line_at(LineTableFormat::Locations, &table, 100, unit * 2);
        let got: Vec<_> = (0..7).map(at).collect();
        assert_eq!(
            got,
            [
                None,
                Some(100),
                Some(100),
                Some(102),
                Some(99),
                Some(169),
                None
            ]
        );
        // Truncated entries and a stray continuation byte are malformed, not a panic.
        assert_eq!(
            line_at(LineTableFormat::Locations, &[0xf0, 0x40], 1, 0),
            None
        );
        assert_eq!(line_at(LineTableFormat::Locations, &[0x05], 1, 0), None);
        assert_eq!(
            line_at(LineTableFormat::Locations, &[0xd8, 0x00], 1, 0),
            None
        );
    }
}
