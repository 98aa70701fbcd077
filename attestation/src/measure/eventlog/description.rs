//! Human descriptions of event data, decoded by event type (UEFI variables, PE image loads, GPT,
//! firmware blobs, handoff tables, tagged events, device paths). They never fail: data that does
//! not decode as its type says is described by its size.

use super::EventType;
use super::cursor::Cursor;

/// Decodes a human description of an event's data. Never fails: data that does not decode as
/// its type says is described by its size.
pub fn describe(event_type: EventType, data: &[u8]) -> String {
    let decoded = match event_type {
        EventType::EV_NO_ACTION => describe_no_action(data),
        EventType::EV_SEPARATOR => describe_separator(data),
        EventType::EV_EFI_VARIABLE_DRIVER_CONFIG
        | EventType::EV_EFI_VARIABLE_BOOT
        | EventType::EV_EFI_VARIABLE_BOOT2
        | EventType::EV_EFI_VARIABLE_AUTHORITY => describe_variable(data),
        EventType::EV_EFI_BOOT_SERVICES_APPLICATION
        | EventType::EV_EFI_BOOT_SERVICES_DRIVER
        | EventType::EV_EFI_RUNTIME_SERVICES_DRIVER => describe_image_load(data),
        EventType::EV_EFI_GPT_EVENT | EventType::EV_EFI_GPT_EVENT2 => describe_gpt(data),
        EventType::EV_EVENT_TAG => describe_tagged(data),
        EventType::EV_EFI_PLATFORM_FIRMWARE_BLOB => describe_blob(data),
        EventType::EV_EFI_PLATFORM_FIRMWARE_BLOB2 => describe_blob2(data),
        EventType::EV_EFI_HANDOFF_TABLES => describe_handoff(data),
        EventType::EV_EFI_HANDOFF_TABLES2 => describe_handoff2(data),
        _ => text(data),
    };
    decoded.unwrap_or_else(|| format!("{} bytes", data.len()))
}

/// Reads a 16-byte EFI_GUID as text; `None` if the data is short.
fn guid(c: &mut Cursor<'_>, what: &'static str) -> Option<String> {
    c.take(16, what).ok().map(guid_text)
}

/// Formats a little-endian EFI_GUID the way UEFI text does (8-4-4-4-12, uppercase).
pub(crate) fn guid_text(b: &[u8]) -> String {
    if b.len() != 16 {
        return format!("<{} byte GUID>", b.len());
    }
    format!(
        "{:08X}-{:04X}-{:04X}-{:02X}{:02X}-{:02X}{:02X}{:02X}{:02X}{:02X}{:02X}",
        u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        u16::from_le_bytes([b[4], b[5]]),
        u16::from_le_bytes([b[6], b[7]]),
        b[8],
        b[9],
        b[10],
        b[11],
        b[12],
        b[13],
        b[14],
        b[15]
    )
}

/// Escapes control characters (newlines in GRUB commands, stray bytes) and nothing else.
fn escape_controls(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Bytes as text, trailing NULs dropped, non-ASCII bytes shown as `\xNN`, controls escaped.
pub(super) fn printable(data: &[u8]) -> String {
    let end = data.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    data[..end]
        .iter()
        .map(|&b| match b {
            b if b.is_ascii() && !b.is_ascii_control() => (b as char).to_string(),
            b'\n' => "\\n".to_string(),
            b'\t' => "\\t".to_string(),
            b'\r' => "\\r".to_string(),
            b => format!("\\x{b:02x}"),
        })
        .collect()
}

/// Text, if the data is ASCII (optionally NUL-terminated) or UTF-16LE text.
fn text(data: &[u8]) -> Option<String> {
    let end = data.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    let trimmed = &data[..end];
    if trimmed.is_empty() {
        return None;
    }
    if trimmed
        .iter()
        .all(|&b| b.is_ascii_graphic() || matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
    {
        return Some(printable(trimmed));
    }
    // UTF-16LE ASCII text: every odd byte zero (allowing for the odd trailing byte trimmed above).
    if data.len() >= 4 && data.len().is_multiple_of(2) && data.chunks(2).all(|c| c[1] == 0) {
        return Some(utf16_text(data));
    }
    None
}

/// UTF-16LE up to the first NUL, lossily decoded, with control characters escaped.
fn utf16_text(data: &[u8]) -> String {
    let units: Vec<u16> = data
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    escape_controls(&String::from_utf16_lossy(&units))
}

fn describe_no_action(data: &[u8]) -> Option<String> {
    let sig = data.get(..16)?;
    let name = printable(sig.split(|&b| b == 0).next().unwrap_or_default());
    if name.is_empty() {
        return None;
    }
    if name == "StartupLocality" {
        return Some(format!("StartupLocality {}", data.get(16)?));
    }
    Some(name)
}

fn describe_separator(data: &[u8]) -> Option<String> {
    let v = Cursor::new(data).u32("separator value").ok()?;
    Some(match v {
        0 => "separator".into(),
        0xFFFF_FFFF => "separator (error)".into(),
        v => format!("separator {v:#010x}"),
    })
}

fn describe_variable(data: &[u8]) -> Option<String> {
    let mut c = Cursor::new(data);
    let guid = guid(&mut c, "variable GUID")?;
    let name_len = usize::try_from(c.u64("variable name length").ok()?).ok()?;
    let data_len = usize::try_from(c.u64("variable data length").ok()?).ok()?;
    let name = utf16_text(c.take(name_len.checked_mul(2)?, "variable name").ok()?);
    let value = c.take(data_len, "variable data").ok()?;
    let mut out = format!("{name} ({guid}): {data_len} bytes");
    let boot_option = name.len() == 8
        && name.starts_with("Boot")
        && name[4..].chars().all(|ch| ch.is_ascii_hexdigit());
    if name == "BootOrder" && value.len().is_multiple_of(2) {
        let order: Vec<String> = value
            .chunks(2)
            .map(|u| format!("Boot{:04X}", u16::from_le_bytes([u[0], u[1]])))
            .collect();
        out = format!("{name} ({guid}): {}", order.join(", "));
    } else if let (true, Some(opt)) = (boot_option, describe_load_option(value)) {
        out = format!("{name} ({guid}): {opt}");
    }
    Some(out)
}

/// EFI_LOAD_OPTION: attributes u32, file path list length u16, description (UTF-16, NUL), paths.
fn describe_load_option(value: &[u8]) -> Option<String> {
    let mut c = Cursor::new(value);
    let _attributes = c.u32("load option attributes").ok()?;
    let path_len = c.u16("file path list length").ok()? as usize;
    let rest = c.rest();
    let desc_units = rest.chunks_exact(2).position(|u| u == [0, 0])?;
    let desc = utf16_text(&rest[..desc_units * 2]);
    let paths = rest.get(desc_units * 2 + 2..)?.get(..path_len)?;
    Some(format!("\"{desc}\" {}", device_path_text(paths)))
}

fn describe_image_load(data: &[u8]) -> Option<String> {
    // EFI_IMAGE_LOAD_EVENT. The load address is chosen at run time and deliberately not shown,
    // so that an expected event and a logged one describe alike.
    let mut c = Cursor::new(data);
    let _location = c.u64("image location").ok()?;
    let length = c.u64("image length").ok()?;
    let link_time = c.u64("image link-time address").ok()?;
    let path_len = usize::try_from(c.u64("device path length").ok()?).ok()?;
    let path = c.take(path_len, "device path").ok()?;
    Some(format!(
        "PE image, {length} bytes, link-time base {link_time:#x}, {}",
        device_path_text(path)
    ))
}

fn describe_gpt(data: &[u8]) -> Option<String> {
    // UEFI_GPT_DATA: EFI_PARTITION_TABLE_HEADER (92 bytes), u64 number of partitions, entries.
    let header = data.get(..92)?;
    if &header[..8] != b"EFI PART" {
        return None;
    }
    let disk = guid_text(&header[56..72]);
    let count = Cursor::new(data.get(92..)?)
        .u64("number of partitions")
        .ok()?;
    Some(format!("GPT disk {disk}, {count} partitions"))
}

fn describe_tagged(data: &[u8]) -> Option<String> {
    let mut c = Cursor::new(data);
    let id = c.u32("tag id").ok()?;
    let size = c.u32("tagged data size").ok()? as usize;
    let body = c.take(size, "tagged data").ok()?;
    let body = text(body).unwrap_or_else(|| format!("{size} bytes"));
    Some(format!("tag {id:#010X}: {body}"))
}

fn describe_blob(data: &[u8]) -> Option<String> {
    let mut c = Cursor::new(data);
    let base = c.u64("blob base").ok()?;
    let len = c.u64("blob length").ok()?;
    Some(format!("firmware blob at {base:#x}, {len} bytes"))
}

fn describe_blob2(data: &[u8]) -> Option<String> {
    let mut c = Cursor::new(data);
    let desc_len = c.u8("blob description size").ok()? as usize;
    let desc = printable(c.take(desc_len, "blob description").ok()?);
    let base = c.u64("blob base").ok()?;
    let len = c.u64("blob length").ok()?;
    Some(format!("{desc} at {base:#x}, {len} bytes"))
}

fn describe_tables(c: &mut Cursor<'_>) -> Option<String> {
    let n = c.u64("number of tables").ok()?;
    let mut guids = Vec::new();
    for _ in 0..n.min(16) {
        guids.push(guid(c, "table GUID")?);
        c.u64("table address").ok()?;
    }
    Some(format!("{n} table(s) [{}]", guids.join(", ")))
}

fn describe_handoff(data: &[u8]) -> Option<String> {
    describe_tables(&mut Cursor::new(data))
}

fn describe_handoff2(data: &[u8]) -> Option<String> {
    let mut c = Cursor::new(data);
    let desc_len = c.u8("handoff description size").ok()? as usize;
    let desc = printable(c.take(desc_len, "handoff description").ok()?);
    Some(format!("{desc}: {}", describe_tables(&mut c)?))
}

/// Text form of a UEFI device path (the node types firmware logs; others shown generically).
pub(crate) fn device_path_text(mut path: &[u8]) -> String {
    let mut nodes = Vec::new();
    while path.len() >= 4 {
        let (ty, sub) = (path[0], path[1]);
        let len = u16::from_le_bytes([path[2], path[3]]) as usize;
        if len < 4 || len > path.len() {
            nodes.push("<malformed>".to_string());
            break;
        }
        let body = &path[4..len];
        path = &path[len..];
        let node = match (ty, sub) {
            (0x7F, 0xFF) => break,
            (0x7F, 0x01) => ",".to_string(),
            (0x01, 0x01) if body.len() == 2 => format!("Pci({:#x},{:#x})", body[1], body[0]),
            (0x01, 0x04) if body.len() >= 16 => format!("VenHw({})", guid_text(&body[..16])),
            (0x02, 0x01) if body.len() == 8 => {
                let mut c = Cursor::new(body);
                let (hid, uid) = (
                    c.u32("ACPI HID").unwrap_or(0),
                    c.u32("ACPI UID").unwrap_or(0),
                );
                match hid {
                    0x0A03_41D0 => format!("PciRoot({uid:#x})"),
                    0x0A08_41D0 => format!("PcieRoot({uid:#x})"),
                    _ => format!("Acpi({hid:#010x},{uid:#x})"),
                }
            }
            (0x03, 0x02) if body.len() == 4 => format!(
                "Scsi({:#x},{:#x})",
                u16::from_le_bytes([body[0], body[1]]),
                u16::from_le_bytes([body[2], body[3]])
            ),
            (0x03, 0x17) if body.len() == 12 => {
                let mut c = Cursor::new(body);
                let ns = c.u32("NVMe namespace").unwrap_or(0);
                let eui: Vec<String> = body[4..].iter().map(|b| format!("{b:02X}")).collect();
                format!("NVMe({ns:#x},{})", eui.join("-"))
            }
            (0x03, 0x0A) if body.len() >= 16 => format!("VenMsg({})", guid_text(&body[..16])),
            (0x04, 0x01) if body.len() == 38 => {
                let mut c = Cursor::new(body);
                let part = c.u32("partition number").unwrap_or(0);
                let start = c.u64("partition start").unwrap_or(0);
                let size = c.u64("partition size").unwrap_or(0);
                let sig = c.take(16, "partition signature").unwrap_or_default();
                match (body[36], body[37]) {
                    (2, 2) => format!("HD({part},GPT,{},{start:#x},{size:#x})", guid_text(sig)),
                    _ => format!("HD({part},MBR,{start:#x},{size:#x})"),
                }
            }
            (0x04, 0x03) if body.len() >= 16 => format!("VenMedia({})", guid_text(&body[..16])),
            (0x04, 0x04) => utf16_text(body),
            (0x04, 0x06) if body.len() == 16 => format!("FvFile({})", guid_text(body)),
            (0x04, 0x07) if body.len() == 16 => format!("Fv({})", guid_text(body)),
            _ => format!("Path({ty},{sub},{})", hex::encode(body)),
        };
        nodes.push(node);
    }
    nodes.join("/").replace("/,/", ",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utf16(s: &str) -> Vec<u8> {
        s.encode_utf16().flat_map(u16::to_le_bytes).collect()
    }

    const GLOBAL: [u8; 16] = [
        0x61, 0xDF, 0xE4, 0x8B, 0xCA, 0x93, 0xD2, 0x11, 0xAA, 0x0D, 0x00, 0xE0, 0x98, 0x03, 0x2B,
        0x8C,
    ];

    /// UEFI_VARIABLE_DATA: GUID, name length (characters), data length, UTF-16 name, data.
    fn variable(name: &str, value: &[u8]) -> Vec<u8> {
        let mut v = GLOBAL.to_vec();
        v.extend_from_slice(&(name.encode_utf16().count() as u64).to_le_bytes());
        v.extend_from_slice(&(value.len() as u64).to_le_bytes());
        v.extend(utf16(name));
        v.extend_from_slice(value);
        v
    }

    #[test]
    fn variables_name_their_guid_and_decode_boot_order() {
        assert_eq!(guid_text(&GLOBAL), "8BE4DF61-93CA-11D2-AA0D-00E098032B8C");
        assert_eq!(
            describe(
                EventType::EV_EFI_VARIABLE_DRIVER_CONFIG,
                &variable("SecureBoot", &[1])
            ),
            "SecureBoot (8BE4DF61-93CA-11D2-AA0D-00E098032B8C): 1 bytes"
        );
        assert_eq!(
            describe(
                EventType::EV_EFI_VARIABLE_BOOT,
                &variable("BootOrder", &[1, 0, 0x0A, 0])
            ),
            "BootOrder (8BE4DF61-93CA-11D2-AA0D-00E098032B8C): Boot0001, Boot000A"
        );
        // Cut one byte short: described by its size, never an error or a panic.
        let v = variable("SecureBoot", &[1]);
        let short = &v[..v.len() - 1];
        assert_eq!(
            describe(EventType::EV_EFI_VARIABLE_DRIVER_CONFIG, short),
            format!("{} bytes", short.len())
        );
    }

    #[test]
    fn load_options_and_device_paths_read_as_uefi_text() {
        // PciRoot(0x0)/Pci(0x1,0x2)/<end>
        let mut path = vec![0x02, 0x01, 12, 0];
        path.extend_from_slice(&0x0A03_41D0u32.to_le_bytes());
        path.extend_from_slice(&0u32.to_le_bytes());
        path.extend_from_slice(&[0x01, 0x01, 6, 0, 0x02, 0x01]);
        path.extend_from_slice(&[0x7F, 0xFF, 4, 0]);
        assert_eq!(device_path_text(&path), "PciRoot(0x0)/Pci(0x1,0x2)");
        // A node claiming more bytes than there are.
        assert_eq!(device_path_text(&[0x04, 0x04, 40, 0, 0, 0]), "<malformed>");

        let mut option = 1u32.to_le_bytes().to_vec();
        option.extend_from_slice(&(path.len() as u16).to_le_bytes());
        option.extend(utf16("UEFI Disk\0"));
        option.extend_from_slice(&path);
        assert_eq!(
            describe(
                EventType::EV_EFI_VARIABLE_BOOT,
                &variable("Boot0001", &option)
            ),
            "Boot0001 (8BE4DF61-93CA-11D2-AA0D-00E098032B8C): \"UEFI Disk\" PciRoot(0x0)/Pci(0x1,0x2)"
        );
    }

    #[test]
    fn fixed_layout_events_decode() {
        assert_eq!(describe(EventType::EV_SEPARATOR, &[0; 4]), "separator");
        assert_eq!(
            describe(EventType::EV_SEPARATOR, &[0xFF; 4]),
            "separator (error)"
        );
        assert_eq!(describe(EventType::EV_SEPARATOR, &[0; 3]), "3 bytes");

        let mut tagged = super::super::LINUX_LOAD_OPTIONS_TAG.to_le_bytes().to_vec();
        tagged.extend_from_slice(&6u32.to_le_bytes());
        tagged.extend_from_slice(b"quiet\0");
        assert_eq!(
            describe(EventType::EV_EVENT_TAG, &tagged),
            "tag 0x8F3B22ED: quiet"
        );

        let mut blob = vec![3];
        blob.extend_from_slice(b"Fv1");
        blob.extend_from_slice(&0xFFE0_0000u64.to_le_bytes());
        blob.extend_from_slice(&0x1000u64.to_le_bytes());
        assert_eq!(
            describe(EventType::EV_EFI_PLATFORM_FIRMWARE_BLOB2, &blob),
            "Fv1 at 0xffe00000, 4096 bytes"
        );

        let mut tables = vec![8];
        tables.extend_from_slice(b"TdxTable");
        tables.extend_from_slice(&1u64.to_le_bytes());
        tables.extend_from_slice(&GLOBAL);
        tables.extend_from_slice(&0x8000u64.to_le_bytes());
        assert_eq!(
            describe(EventType::EV_EFI_HANDOFF_TABLES2, &tables),
            "TdxTable: 1 table(s) [8BE4DF61-93CA-11D2-AA0D-00E098032B8C]"
        );
    }

    #[test]
    fn text_is_ascii_or_utf16_with_controls_escaped() {
        assert_eq!(
            describe(EventType::EV_EFI_ACTION, b"Calling EFI Application\0"),
            "Calling EFI Application"
        );
        assert_eq!(
            describe(EventType::EV_IPL, b"grub_cmd: linux /vmlinuz\nx"),
            "grub_cmd: linux /vmlinuz\\nx"
        );
        assert_eq!(describe(EventType::EV_IPL, &utf16("MokList\0")), "MokList");
        assert_eq!(describe(EventType::EV_IPL, &[0x80, 0x81, 0x82]), "3 bytes");
        assert_eq!(printable(b"Spec\xff\0\0"), "Spec\\xff");
    }
}
