def mount_ui(app, settings):  # the Gradio UI, written next
    return None
